"""Downstream accuracy: train on synthetic data, test on real data (the DPDM protocol)."""

from __future__ import annotations

import numpy as np

from tdpdm.evaluate.training import accuracy, train_classifier, validate_image_set


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), about `val_fraction` of each class in val, shuffled with `seed`.

    Stratifying keeps the validation split's class mix equal to the synthetic set's, so the
    epoch choice is not swayed by a class that happened to be over-drawn.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(len(idx) * val_fraction)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    train, val = np.concatenate(train_idx), np.concatenate(val_idx)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"{len(labels)} images are too few to split with val_fraction={val_fraction}"
        )
    return rng.permutation(train), rng.permutation(val)


def downstream_accuracy(
    synth_images: np.ndarray,
    synth_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    epochs: int,
    seed: int,
    device: str,
    val_fraction: float = 0.1,
    batch_size: int = 128,
    progress: bool = True,
    num_classes: int = 10,
) -> dict:
    """Accuracy in [0, 1] on the real test split of a CNN trained on synthetic data.

    The epoch is selected on a held-out *synthetic* split; the real test split is read once,
    after selection, so it cannot leak into the model choice.
    """
    synth_images, synth_labels = validate_image_set(
        synth_images, synth_labels, name="synthetic", num_classes=num_classes, shape=None
    )
    test_images, test_labels = validate_image_set(
        test_images, test_labels, name="real test", num_classes=num_classes, shape=None
    )
    if synth_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"synthetic images {synth_images.shape[1:]} and real test images "
            f"{test_images.shape[1:]} differ in shape"
        )
    train_idx, val_idx = stratified_split(synth_labels, val_fraction, seed)
    trained = train_classifier(
        synth_images[train_idx],
        synth_labels[train_idx],
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        val_images=synth_images[val_idx],
        val_labels=synth_labels[val_idx],
        progress=progress,
        num_classes=num_classes,
    )
    return {
        "accuracy": accuracy(trained.model, test_images, test_labels, device),
        "selected_epoch": trained.selected_epoch,
        "val_accuracy": trained.val_accuracy,
        "train_size": len(train_idx),
        "val_size": len(val_idx),
    }
