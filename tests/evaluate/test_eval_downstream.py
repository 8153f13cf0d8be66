import numpy as np
import pytest

from tdpdm.evaluate import downstream
from tdpdm.evaluate.downstream import downstream_accuracy, stratified_split
from tdpdm.evaluate.training import TrainedClassifier
from tdpdm.models.classifier import DPDMClassifier


def test_downstream_selects_best_synthetic_val_epoch(mnist):
    """Real training images stand in for a synthetic set of 2k."""
    result = downstream_accuracy(
        mnist["train_images"][:2000],
        mnist["train_labels"][:2000],
        mnist["test_images"][:2000],
        mnist["test_labels"][:2000],
        epochs=3,
        seed=0,
        device="cpu",
        batch_size=32,
        progress=False,
    )
    vals = result["val_accuracy"]
    assert len(vals) == 3
    assert result["selected_epoch"] == int(np.argmax(vals)) + 1
    assert 0.8 < result["accuracy"] <= 1.0
    assert result["train_size"] + result["val_size"] == 2000
    assert abs(result["val_size"] - 200) <= 10
    # validation accuracies are counts over the synthetic val split, not over the test split
    assert all(abs(v * result["val_size"] - round(v * result["val_size"])) < 1e-6 for v in vals)


def test_selection_uses_synthetic_split_only(monkeypatch, mnist):
    seen = {}

    def spy(images, labels, **kwargs):
        seen.update(kwargs, train=images)
        return TrainedClassifier(
            model=DPDMClassifier().eval(), val_accuracy=[0.1], selected_epoch=1
        )

    monkeypatch.setattr(downstream, "train_classifier", spy)
    synth, synth_labels = mnist["train_images"][:500], mnist["train_labels"][:500]
    downstream_accuracy(
        synth,
        synth_labels,
        mnist["test_images"][:100],
        mnist["test_labels"][:100],
        epochs=1,
        seed=0,
        device="cpu",
        progress=False,
    )
    synth_rows = {row.tobytes() for row in synth}
    assert all(row.tobytes() in synth_rows for row in seen["val_images"])
    assert len(seen["val_images"]) + len(seen["train"]) == 500


def test_stratified_split_keeps_class_proportions():
    labels = np.repeat(np.arange(10), [100, 200, 50, 50, 50, 50, 50, 50, 50, 350])
    train, val = stratified_split(labels, 0.1, seed=1)
    assert len(np.intersect1d(train, val)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    counts = np.bincount(labels[val], minlength=10)
    assert counts.tolist() == [10, 20, 5, 5, 5, 5, 5, 5, 5, 35]
    again_train, again_val = stratified_split(labels, 0.1, seed=1)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_stratified_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(np.zeros(10, np.int64), fraction, seed=0)


def test_stratified_split_rejects_too_few_images():
    with pytest.raises(ValueError, match="too few"):
        stratified_split(np.arange(3), 0.1, seed=0)
