import numpy as np
import pytest
import torch

from tdpdm.evaluate import training
from tdpdm.evaluate.training import (
    accuracy,
    predict_proba,
    train_classifier,
    validate_image_set,
)


@pytest.fixture(scope="module")
def trained_real(mnist):
    """2 epochs on 5k real images, selecting on 1k other *training* images."""
    return train_classifier(
        mnist["train_images"][:5000],
        mnist["train_labels"][:5000],
        epochs=2,
        batch_size=32,
        seed=0,
        device="cpu",
        val_images=mnist["train_images"][5000:6000],
        val_labels=mnist["train_labels"][5000:6000],
        progress=False,
    )


def test_cnn_on_5k_real_mnist_exceeds_90_percent(trained_real, mnist):
    acc = accuracy(
        trained_real.model, mnist["test_images"][:2000], mnist["test_labels"][:2000], "cpu"
    )
    assert acc > 0.90


def test_selected_epoch_matches_best_val_and_restored_state(trained_real, mnist):
    vals = trained_real.val_accuracy
    assert len(vals) == 2 and len(trained_real.train_loss) == 2
    assert trained_real.selected_epoch == int(np.argmax(vals)) + 1
    again = accuracy(
        trained_real.model,
        mnist["train_images"][5000:6000],
        mnist["train_labels"][5000:6000],
        "cpu",
    )
    assert again == pytest.approx(max(vals))
    assert not trained_real.model.training


def test_keeps_weights_of_best_epoch_not_last(monkeypatch, mnist):
    """Scripted validation scores: epoch 2 is best, so its weights must come back."""
    scripted, snapshots = iter([0.5, 0.9, 0.7]), []

    def fake_accuracy(model, images, labels, device, batch_size=512):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(training, "accuracy", fake_accuracy)
    result = train_classifier(
        mnist["train_images"][:256],
        mnist["train_labels"][:256],
        epochs=3,
        seed=0,
        device="cpu",
        val_images=mnist["train_images"][256:320],
        val_labels=mnist["train_labels"][256:320],
        progress=False,
    )
    assert result.val_accuracy == [0.5, 0.9, 0.7]
    assert result.selected_epoch == 2
    final = result.model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[2][k]) for k in final)


def test_shuffled_labels_give_near_chance_accuracy(mnist):
    """The protocol can fail: without a real image-label relation the CNN learns nothing."""
    labels = np.random.default_rng(0).permutation(mnist["train_labels"][:5000])
    result = train_classifier(
        mnist["train_images"][:5000],
        labels,
        epochs=1,
        batch_size=64,
        seed=0,
        device="cpu",
        progress=False,
    )
    acc = accuracy(result.model, mnist["test_images"][:2000], mnist["test_labels"][:2000], "cpu")
    assert acc < 0.2


def test_no_validation_selects_last_epoch_and_same_seed_same_weights(mnist):
    kwargs = dict(epochs=2, seed=3, device="cpu", progress=False)
    a = train_classifier(mnist["train_images"][:200], mnist["train_labels"][:200], **kwargs)
    b = train_classifier(mnist["train_images"][:200], mnist["train_labels"][:200], **kwargs)
    assert a.selected_epoch == 2 and a.val_accuracy == []
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_predict_proba_rows_are_distributions(mnist):
    model = training.DPDMClassifier()
    probs = predict_proba(model, mnist["test_images"][:700], "cpu", batch_size=256)
    assert probs.shape == (700, 10)
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs >= 0).all()


def test_validate_image_set_quantises_floats():
    images = np.full((3, 28, 28), 0.5, dtype=np.float32)
    out, labels = validate_image_set(images, np.array([0, 9, 3]), name="s")
    assert out.dtype == np.uint8 and (out == 128).all()
    assert labels.dtype == np.int64


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), "empty"),
        (np.zeros((2, 32, 32), np.uint8), np.zeros(2, np.int64), "shape"),
        (np.full((2, 28, 28), np.nan, np.float32), np.zeros(2, np.int64), "NaN"),
        (np.full((2, 28, 28), 2.0, np.float32), np.zeros(2, np.int64), r"\[0, 1\]"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, 10]), "labels must lie"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0, -1]), "labels must lie"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros(3, np.int64), "labels"),
        (np.zeros((2, 28, 28), np.uint8), np.array([0.0, 1.0]), "integers"),
    ],
)
def test_validate_image_set_rejects_bad_input(images, labels, message):
    with pytest.raises(ValueError, match=message):
        validate_image_set(images, labels, name="synthetic")


def test_rejects_bad_arguments(mnist):
    images, labels = mnist["train_images"][:10], mnist["train_labels"][:10]
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(images, labels, epochs=0, seed=0, device="cpu")
    with pytest.raises(ValueError, match="val_images and val_labels"):
        train_classifier(images, labels, epochs=1, seed=0, device="cpu", val_images=images)
