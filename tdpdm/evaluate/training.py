"""Train and apply the DPDM CNN: the one classifier every evaluation metric goes through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tdpdm.models.classifier import IMAGE_SIZE, DPDMClassifier, to_model_input

NUM_CLASSES = 10
DPDM_SHAPE = (IMAGE_SIZE, IMAGE_SIZE)
"""DPDM's own evaluation images: grey 28x28."""


def _shape_ok(shape: tuple[int, ...]) -> bool:
    """(S, S) grey or (C, S, S) with C 1 or 3, S >= 8 (the CNN pools three times)."""
    if len(shape) == 3 and shape[0] not in (1, 3):
        return False
    return len(shape) in (2, 3) and shape[-1] == shape[-2] >= 8


def validate_image_set(
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    name: str,
    num_classes: int = NUM_CLASSES,
    shape: tuple[int, ...] | None = DPDM_SHAPE,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check an image set of per-image `shape` ((H, W) grey or (C, H, W); None: any square
    grey (N, S, S) or (N, C, S, S), C 1 or 3) and return it as uint8 (plus int64 labels).

    Float images must be finite and in [0, 1]; they are quantised to uint8 exactly as a released
    image file would be, so synthetic and real data go through one code path.
    """
    images = np.asarray(images)
    wanted = tuple(shape) if shape is not None else None
    if not _shape_ok(images.shape[1:]) or wanted not in (None, images.shape[1:]):
        expected = f"(N, {', '.join(map(str, wanted))})" if wanted else "(N, [C,] S, S)"
        raise ValueError(f"{name}: expected images of shape {expected}, got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: image set is empty")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{name}: images must be uint8 or float in [0, 1], got {images.dtype}")
        if not np.isfinite(images).all():
            raise ValueError(f"{name}: images contain NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"{name}: float images must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
        images = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    if labels is None:
        return images, None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{name}: expected {images.shape[0]} labels of shape (N,), got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"{name}: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    return images, labels.astype(np.int64)


def classifier_for(image_shape: tuple[int, ...], num_classes: int) -> DPDMClassifier:
    """The DPDM CNN for images of per-image shape (S, S) or (C, S, S) (public: the data's)."""
    channels = 1 if len(image_shape) == 2 else image_shape[0]
    return DPDMClassifier(num_classes, in_channels=channels, image_size=image_shape[-1])


@dataclass
class TrainedClassifier:
    """A trained CNN (eval mode) plus the record needed to report how it was selected."""

    model: DPDMClassifier
    val_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    selected_epoch: int = 0  # 1-based; earliest best on ties; last epoch without validation


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 3e-4,
    seed: int,
    device: str,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    progress: bool = True,
    num_classes: int = NUM_CLASSES,
) -> TrainedClassifier:
    """Train the DPDM CNN with Adam; with a validation split, keep the best-validation epoch.

    The validation split must never be the real test split: selecting on it would inflate the
    reported accuracy. Seeds torch's global RNG (init and dropout) and shuffles with its own
    generator, so a run is reproducible on a given device.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if (val_images is None) != (val_labels is None):
        raise ValueError("give both val_images and val_labels, or neither")
    images, labels = validate_image_set(
        images, labels, name="train", num_classes=num_classes, shape=None
    )
    if val_images is not None:
        val_images, val_labels = validate_image_set(
            val_images,
            val_labels,
            name="validation",
            num_classes=num_classes,
            shape=images.shape[1:],
        )

    dev = torch.device(device)
    torch.manual_seed(seed)
    model = classifier_for(images.shape[1:], num_classes).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.tensor(images, device=dev)  # uint8 on the device: 4x smaller than float
    y_all = torch.tensor(labels, device=dev)
    n = x_all.shape[0]

    result = TrainedClassifier(model=model)
    best_acc, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        total = torch.zeros((), device=dev)  # summed on the device: no sync per step
        bar = tqdm(
            range(0, n, batch_size),
            desc=f"classifier epoch {epoch}/{epochs}",
            disable=not progress,
            leave=False,
        )
        for start in bar:
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(model(to_model_input(x_all[idx], dev)), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * idx.shape[0]
        epoch_loss = total.item() / n
        result.train_loss.append(epoch_loss)
        if val_images is None:
            continue
        acc = accuracy(model, val_images, val_labels, device)
        result.val_accuracy.append(acc)
        if acc > best_acc:
            best_acc, result.selected_epoch = acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress:
            tqdm.write(f"classifier epoch {epoch}/{epochs}: loss {epoch_loss:.4f}, val {acc:.4f}")

    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.selected_epoch = epochs
    model.eval()
    return result


@torch.no_grad()
def batched_outputs(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    device: str,
    batch_size: int = 512,
) -> np.ndarray:
    """Apply `fn` to uint8 images batch by batch; float64 numpy output (N, ...)."""
    out = [
        fn(to_model_input(images[i : i + batch_size], device)).double().cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out, axis=0)


def predict_proba(
    model: nn.Module, images: np.ndarray, device: str, batch_size: int = 512
) -> np.ndarray:
    """Class probabilities (N, K) of `model` (put in eval mode) on uint8 images of its shape."""
    model.eval()
    return batched_outputs(lambda x: torch.softmax(model(x), dim=1), images, device, batch_size)


def accuracy(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, device: str, batch_size: int = 512
) -> float:
    """Fraction in [0, 1] of images whose arg-max class equals the label."""
    probs = predict_proba(model, images, device, batch_size)
    return float((probs.argmax(axis=1) == np.asarray(labels)).mean())
