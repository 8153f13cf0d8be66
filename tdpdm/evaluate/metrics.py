"""All evaluation metrics of one synthetic data set, as DESIGN.md section 6 specifies.

Every metric here reads the real data (test split, and the training split for the evaluation
classifier), so the result is for the data custodian and is not a DP release:
`evaluation_reads_real_data` is always True in the returned dict.
"""

from __future__ import annotations

import numpy as np

from tdpdm.evaluate.downstream import downstream_accuracy
from tdpdm.evaluate.evaluator import load_or_train_evaluator
from tdpdm.evaluate.frechet import classifier_features, frechet_distance
from tdpdm.evaluate.inception_fid import check_weights_file, inception_fid
from tdpdm.evaluate.inception_score import inception_score
from tdpdm.evaluate.training import DPDM_SHAPE, predict_proba, validate_image_set

EVALUATOR_SEED = 0  # one fixed evaluator per data set, so runs with different seeds compare
IS_SPLITS = 10


def _subsample(images: np.ndarray, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    if len(images) <= max_samples:
        return images
    return images[np.sort(rng.choice(len(images), size=max_samples, replace=False))]


def _pair(
    value: tuple | None, name: str, num_classes: int, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"{name} must be an (images, labels) tuple")
    return validate_image_set(value[0], value[1], name=name, num_classes=num_classes, shape=shape)


def evaluate_synthetic(
    synth_images: np.ndarray,
    synth_labels: np.ndarray,
    *,
    real_train: tuple[np.ndarray, np.ndarray] | None,
    real_test: tuple[np.ndarray, np.ndarray],
    dataset: str,
    device: str,
    seed: int,
    cache_dir: str,
    classifier_epochs: int,
    evaluator_epochs: int,
    inception_weights: str | None = None,
    inception_sha256: str | None = None,
    fd_max_samples: int = 10000,
    batch_size: int = 128,
    progress: bool = True,
    num_classes: int = 10,
    image_shape: tuple[int, ...] = DPDM_SHAPE,
) -> dict:
    """Downstream accuracy, Inception Score, classifier Frechet distance and (optionally) FID.

    - accuracy: DPDM CNN trained on the synthetic set, epoch chosen on a synthetic split, tested
      on the real test split (fraction in [0, 1]).
    - inception_score(_std): from the evaluation CNN (trained on `real_train`, cached in
      `cache_dir`) on all synthetic images; at most 10.
    - classifier_fd: Frechet distance in that CNN's 128-d feature space between the synthetic
      images and the real TEST split (the reference is always present, disjoint from the
      evaluator's training data, and 10k images as in the usual FID protocol). It is not an
      Inception FID and must never be reported as one.
    - fid: Inception FID against the same real test images, only when the pytorch-fid weights
      file is supplied; otherwise None.
    `seed` drives the downstream CNN and the subsampling; the evaluator always uses seed 0 so
    that every run of a data set is measured with the same model. `batch_size` is the training
    batch of both CNNs (part of the evaluator's cache key).
    Both Frechet distances use at most `fd_max_samples` images per side (random, from `seed`).
    Without `real_train`, no evaluator exists: inception_score(_std) and classifier_fd are None.
    `num_classes` and `image_shape` ((H, W) grey or (3, H, W)): the data's (public), DPDM's by
    default; the CNNs follow them, and the Inception Score is then at most `num_classes`.
    """
    shape = tuple(image_shape)
    synth_images, synth_labels = validate_image_set(
        synth_images, synth_labels, name="synthetic", num_classes=num_classes, shape=shape
    )
    test_images, test_labels = _pair(real_test, "real_test", num_classes, shape)
    train = None if real_train is None else _pair(real_train, "real_train", num_classes, shape)
    if fd_max_samples < 2:
        raise ValueError(f"fd_max_samples must be >= 2, got {fd_max_samples}")

    if inception_weights is not None:  # fail before minutes of training, not after
        check_weights_file(inception_weights, inception_sha256)

    down = downstream_accuracy(
        synth_images,
        synth_labels,
        test_images,
        test_labels,
        epochs=classifier_epochs,
        seed=seed,
        device=device,
        batch_size=batch_size,
        progress=progress,
        num_classes=num_classes,
    )
    rng = np.random.default_rng(seed)
    synth_fd = _subsample(synth_images, fd_max_samples, rng)
    test_fd = _subsample(test_images, fd_max_samples, rng)
    result = {
        "accuracy": down["accuracy"],
        "selected_epoch": down["selected_epoch"],
        "val_accuracy": down["val_accuracy"],
        "inception_score": None,
        "inception_score_std": None,
        "classifier_fd": None,
        "fid": None,
        "fd_reference": "real_test",
        "fd_samples": [len(synth_fd), len(test_fd)],
        "evaluation_reads_real_data": True,
    }
    if train is not None:
        evaluator = load_or_train_evaluator(
            dataset,
            train[0],
            train[1],
            cache_dir=cache_dir,
            epochs=evaluator_epochs,
            seed=EVALUATOR_SEED,
            device=device,
            batch_size=batch_size,
            progress=progress,
            num_classes=num_classes,
        )
        probs = predict_proba(evaluator, synth_images, device)
        score, std = inception_score(probs, splits=min(IS_SPLITS, len(probs)), seed=seed)
        result["inception_score"], result["inception_score_std"] = score, std
        result["classifier_fd"] = frechet_distance(
            classifier_features(evaluator, synth_fd, device),
            classifier_features(evaluator, test_fd, device),
        )
    if inception_weights is not None:
        result["fid"] = inception_fid(
            synth_fd,
            test_fd,
            weights_path=inception_weights,
            expected_sha256=inception_sha256,
            device=device,
        )
    return result
