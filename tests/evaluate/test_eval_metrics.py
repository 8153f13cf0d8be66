import numpy as np
import pytest

from tdpdm.evaluate.metrics import evaluate_synthetic

KEYS = {
    "accuracy",
    "inception_score",
    "inception_score_std",
    "classifier_fd",
    "fid",
    "selected_epoch",
    "evaluation_reads_real_data",
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("evaluator-cache"))


def _evaluate(mnist, synth, labels, cache_dir, **kwargs):
    defaults = dict(
        real_train=(mnist["train_images"][:5000], mnist["train_labels"][:5000]),
        real_test=(mnist["test_images"][:1000], mnist["test_labels"][:1000]),
        dataset="mnist",
        device="cpu",
        seed=0,
        cache_dir=cache_dir,
        classifier_epochs=2,
        evaluator_epochs=2,
        batch_size=32,
        fd_max_samples=1000,
        progress=False,
    )
    defaults.update(kwargs)
    return evaluate_synthetic(synth, labels, **defaults)


@pytest.fixture(scope="module")
def real_as_synthetic(mnist, cache_dir):
    return _evaluate(
        mnist, mnist["train_images"][10000:12000], mnist["train_labels"][10000:12000], cache_dir
    )


def test_real_images_score_well(real_as_synthetic):
    r = real_as_synthetic
    assert set(r) >= KEYS
    assert r["evaluation_reads_real_data"] is True
    assert r["fid"] is None
    assert r["selected_epoch"] == int(np.argmax(r["val_accuracy"])) + 1
    assert r["fd_reference"] == "real_test"
    assert 0.8 < r["accuracy"] <= 1.0
    assert 5.0 < r["inception_score"] <= 10.0
    assert r["classifier_fd"] >= 0.0
    assert all(isinstance(r[k], float) for k in ("accuracy", "inception_score", "classifier_fd"))


def test_noise_scores_badly(mnist, cache_dir, real_as_synthetic):
    """The metrics can fail: uniform noise with random labels must lose on every metric."""
    rng = np.random.default_rng(0)
    noise = rng.random((2000, 28, 28)).astype(np.float32)  # float input path
    r = _evaluate(mnist, noise, rng.integers(0, 10, 2000), cache_dir)
    assert r["accuracy"] < 0.3
    assert r["inception_score"] < real_as_synthetic["inception_score"] - 2
    assert r["classifier_fd"] > 5 * real_as_synthetic["classifier_fd"]


def test_without_real_train_no_evaluator_metrics(mnist, cache_dir):
    r = _evaluate(
        mnist,
        mnist["train_images"][:300],
        mnist["train_labels"][:300],
        cache_dir,
        real_train=None,
    )
    assert r["inception_score"] is None and r["classifier_fd"] is None
    assert r["accuracy"] is not None and r["evaluation_reads_real_data"] is True


def test_inception_fid_when_weights_given(mnist, cache_dir, random_inception_file):
    path, sha = random_inception_file
    r = _evaluate(
        mnist,
        mnist["train_images"][:300],
        mnist["train_labels"][:300],
        cache_dir,
        inception_weights=str(path),
        inception_sha256=sha,
        fd_max_samples=3,
    )
    assert isinstance(r["fid"], float) and r["fid"] > 0
    assert r["fd_samples"] == [3, 3]


def test_bad_weights_fail_before_training(mnist, cache_dir, random_inception_file, monkeypatch):
    from tdpdm.evaluate import metrics

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the weights file")

    monkeypatch.setattr(metrics, "downstream_accuracy", no_training)
    synth, labels = mnist["train_images"][:100], mnist["train_labels"][:100]
    with pytest.raises(ValueError, match="sha256 mismatch"):
        _evaluate(
            mnist,
            synth,
            labels,
            cache_dir,
            inception_weights=str(random_inception_file[0]),
            inception_sha256="ab" * 32,
        )
    with pytest.raises(FileNotFoundError):
        _evaluate(mnist, synth, labels, cache_dir, inception_weights="/nonexistent.pth")


@pytest.mark.parametrize(
    ("synth", "labels", "message"),
    [
        (np.full((4, 28, 28), np.nan, np.float32), np.zeros(4, np.int64), "NaN"),
        (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), "empty"),
        (np.zeros((4, 1, 28, 28), np.uint8), np.zeros(4, np.int64), "shape"),
        (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 10]), "labels must lie"),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(5, np.int64), "labels"),
    ],
)
def test_rejects_bad_synthetic_input(mnist, cache_dir, synth, labels, message):
    with pytest.raises(ValueError, match=message) as info:
        _evaluate(mnist, synth, labels, cache_dir)
    assert "\n" not in str(info.value)


def test_rejects_bad_real_test(mnist, cache_dir):
    synth, labels = mnist["train_images"][:10], mnist["train_labels"][:10]
    with pytest.raises(ValueError, match="real_test"):
        _evaluate(mnist, synth, labels, cache_dir, real_test=mnist["test_images"][:10])
