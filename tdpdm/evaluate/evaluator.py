"""The evaluation classifier behind the Inception Score and the classifier Frechet distance."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tdpdm.data import storage
from tdpdm.evaluate.training import classifier_for, train_classifier, validate_image_set

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def training_data_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """Short sha256 of the arrays (shape, dtype and bytes) that identifies a cached evaluator."""
    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(images), np.ascontiguousarray(labels)):
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:16]


def evaluator_cache_path(
    dataset: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    cache_dir: str,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    num_classes: int = 10,
) -> Path:
    """Where the evaluator for exactly these arrays and settings is (or will be) cached."""
    if not _SAFE_NAME.match(dataset):
        raise ValueError(f"dataset name {dataset!r} must match {_SAFE_NAME.pattern}")
    digest = training_data_digest(images, labels)
    classes = "" if num_classes == 10 else f"-k{num_classes}"
    name = f"evaluator-{dataset}-{digest}-e{epochs}-b{batch_size}-s{seed}{classes}.pt"
    return Path(cache_dir) / name


def _atomic_save(state: dict, path: Path) -> None:
    """Write then rename (the one atomic write, `storage.write_bytes_atomic`), so a crash or a
    concurrent reader never sees a half-written file. Private: it was trained on real data."""
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes_atomic(str(path), buf.getvalue(), private=True)


def load_or_train_evaluator(
    dataset: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    cache_dir: str,
    epochs: int = 3,
    seed: int = 0,
    device: str,
    batch_size: int = 128,
    progress: bool = True,
    num_classes: int = 10,
) -> nn.Module:
    """The DPDM CNN trained on the REAL training split, cached per data set, data and settings.

    This model is the data custodian's evaluation tool: it is trained on private records without
    any DP guarantee, so it (and its cache file) must never be released. Metrics computed with it
    are for the custodian's eyes. Keep `seed` fixed across runs so every run is measured with the
    same ruler. Returns the model in eval mode, on `device`, with gradients off.
    """
    train_images, train_labels = validate_image_set(
        train_images, train_labels, name="real train", num_classes=num_classes, shape=None
    )
    path = evaluator_cache_path(
        dataset,
        train_images,
        train_labels,
        cache_dir=cache_dir,
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        num_classes=num_classes,
    )
    model = None
    if path.exists():
        try:
            model = classifier_for(train_images.shape[1:], num_classes).to(device)
            model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        except Exception as err:  # any unreadable cache (truncated, other torch) is a miss
            warnings.warn(f"evaluator cache {path} unreadable ({err}); retraining", stacklevel=2)
            model = None
    if model is None:
        model = train_classifier(
            train_images,
            train_labels,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            device=device,
            progress=progress,
            num_classes=num_classes,
        ).model
        _atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    model.eval()
    model.requires_grad_(False)
    return model
