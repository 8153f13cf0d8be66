import numpy as np
import pytest

from tdpdm.evaluate import frechet
from tdpdm.evaluate.frechet import classifier_features, frechet_distance
from tdpdm.models.classifier import DPDMClassifier


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(32, 32))
    return rng.normal(size=(2000, 32)) @ mix  # correlated features, full rank


def test_distance_of_a_set_with_itself_is_zero(feats):
    assert abs(frechet_distance(feats, feats)) < 1e-6 * np.trace(np.cov(feats, rowvar=False))


def test_shift_gives_squared_norm(feats):
    shift = np.linspace(-1, 2, feats.shape[1])
    assert frechet_distance(feats, feats + shift) == pytest.approx(shift @ shift, rel=1e-6)


def test_scale_and_shift_closed_form(feats):
    # b = s a + t: Sb = s^2 Sa, so Tr(Sa + Sb - 2 sqrt(Sa Sb)) = (1 - s)^2 Tr(Sa)
    s, t = 0.5, 1.0
    other = s * feats + t
    diff = feats.mean(axis=0) - other.mean(axis=0)
    expected = diff @ diff + (1 - s) ** 2 * np.trace(np.cov(feats, rowvar=False))
    assert frechet_distance(feats, other) == pytest.approx(expected, rel=1e-6)


def test_independent_gaussians_match_population_formula():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(40000, 3))
    b = rng.normal(0.5, 2.0, size=(40000, 3))
    # 3 * 0.5^2 + 3 * (2 - 1)^2 = 3.75
    assert frechet_distance(a, b) == pytest.approx(3.75, abs=0.1)


def test_low_rank_path_agrees_with_sqrtm_path():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(60, 16)), rng.normal(1.0, 1.5, size=(80, 16))
    ca, cb = a - a.mean(0), b - b.mean(0)
    via_sqrtm = frechet._trace_sqrt_product_sqrtm(
        np.cov(a, rowvar=False), np.cov(b, rowvar=False), 1e-6
    )
    assert frechet._trace_sqrt_product_lowrank(ca, cb) == pytest.approx(via_sqrtm, rel=1e-9)


def test_fewer_samples_than_dimensions():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 300)), rng.normal(size=(7, 300))
    assert abs(frechet_distance(a, a)) < 1e-8
    d_ab = frechet_distance(a, b)
    assert d_ab > 0 and d_ab == pytest.approx(frechet_distance(b, a))


def test_dead_units_are_exact_and_silent(recwarn, feats):
    """Columns constant in both sets (dead ReLUs) only enter through the mean difference."""
    other = 0.5 * feats + 1.0
    pad_a = np.hstack([feats, np.zeros((len(feats), 3))])
    pad_b = np.hstack([other, np.full((len(other), 3), 2.0)])
    expected = frechet_distance(feats, other) + 3 * 2.0**2
    assert frechet_distance(pad_a, pad_b) == pytest.approx(expected, rel=1e-9)
    assert not [w for w in recwarn if "singular" in str(w.message)]


def test_constant_set_is_a_point_mass(feats):
    point = np.ones((10, feats.shape[1]))
    diff = feats.mean(axis=0) - 1.0
    expected = diff @ diff + np.trace(np.cov(feats, rowvar=False))
    assert frechet_distance(feats, point) == pytest.approx(expected, rel=1e-9)


def test_singular_product_falls_back_to_offset(monkeypatch, feats):
    real_sqrtm, calls = frechet.scipy.linalg.sqrtm, []

    def flaky(m):
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(frechet.scipy.linalg, "sqrtm", flaky)
    with pytest.warns(RuntimeWarning, match="singular"):
        d = frechet_distance(feats, feats)
    assert len(calls) == 2
    assert abs(d) < 1e-6 * np.trace(np.cov(feats, rowvar=False))  # the offset cancels out


def test_large_imaginary_part_raises(monkeypatch, feats):
    monkeypatch.setattr(frechet.scipy.linalg, "sqrtm", lambda m: np.eye(m.shape[0]) * (1 + 0.5j))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(feats, feats)


def test_tiny_imaginary_part_is_dropped(monkeypatch, feats):
    real_sqrtm = frechet.scipy.linalg.sqrtm
    monkeypatch.setattr(frechet.scipy.linalg, "sqrtm", lambda m: real_sqrtm(m) + 1e-9j)
    assert abs(frechet_distance(feats, feats)) < 1e-3


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.zeros((1, 4)), np.zeros((5, 4)), "at least 2"),
        (np.zeros((5, 4)), np.zeros((5, 3)), "dimensions differ"),
        (np.zeros(5), np.zeros((5, 1)), "shape"),
        (np.full((5, 4), np.nan), np.zeros((5, 4)), "NaN"),
    ],
)
def test_rejects_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(a, b)


def test_classifier_features_are_128_d(mnist):
    model = DPDMClassifier()
    out = classifier_features(model, mnist["test_images"][:300], "cpu", batch_size=128)
    assert out.shape == (300, 128) and out.dtype == np.float64
    assert not model.training
