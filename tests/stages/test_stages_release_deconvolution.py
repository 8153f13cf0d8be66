"""`released` mode: the per-record release's format and the deconvolved-mixture stage 2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tdpdm.config import ReleaseConfig, Stage2Config
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.deconvolve import fit_deconvolved_mixture, fit_release_model
from tdpdm.stages.latents_io import read_label_vectors, write_latents
from tdpdm.stages.release import release_latents, release_scales


class _Recorder:
    """Collects what a privacy session would record (the release's own accounting is the
    ledger's job, tested in tests/privacy; here: the release reports the event it ran)."""

    def __init__(self) -> None:
        self.events: list = []

    def record(self, event) -> None:
        self.events.append(event)


def _release(z, y, sigma, label_scale=0.6, key=0):
    recorder = _Recorder()
    event = GaussianEvent(noise_multiplier=sigma, stage="latent_release")
    out = release_latents(
        z,
        y,
        num_classes=10,
        cfg=ReleaseConfig(clip_norm=1.0, label_scale=label_scale),
        event=event,
        session=recorder,
        key=MechanismKey("release", key),
    )
    return out, recorder


def test_release_vector_fits_the_clip_norm_without_clipping() -> None:
    rng = np.random.default_rng(0)
    z = rng.choice([-1.0, 1.0], size=(50, 8)).astype(np.float32)  # the largest tanh latents
    y = rng.integers(0, 10, 50)
    lat, lab = release_scales(8, ReleaseConfig(clip_norm=1.0, label_scale=0.6))
    assert math.hypot(lat * math.sqrt(8), lab) == pytest.approx(1.0)
    out, recorder = _release(z, y, sigma=1e-9)
    # Nothing was clipped, so the public scales undo the embedding exactly.
    np.testing.assert_allclose(out.latents, z, atol=1e-5)
    np.testing.assert_allclose(out.label_vectors, np.eye(10)[y], atol=1e-5)
    assert (out.labels == y).all()
    assert [e.stage for e in recorder.events] == ["latent_release"]


def test_release_noise_levels_are_the_ones_applied() -> None:
    rng = np.random.default_rng(1)
    z = rng.uniform(-1, 1, size=(20000, 4)).astype(np.float32)
    y = rng.integers(0, 10, 20000)
    out, _ = _release(z, y, sigma=1.3, label_scale=0.7)
    assert np.std(out.latents - z) == pytest.approx(out.noise_std, rel=0.02)
    assert np.std(out.label_vectors - np.eye(10)[y]) == pytest.approx(out.label_noise_std, rel=0.02)
    assert out.noise_std == pytest.approx(1.3 * math.sqrt(4) / math.sqrt(1 - 0.49))
    assert out.label_noise_std == pytest.approx(1.3 / 0.7)


def test_label_scale_outside_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="label_scale"):
        ReleaseConfig(clip_norm=1.0, label_scale=1.0)
    with pytest.raises(ValueError, match="label_scale"):  # the release's own guard
        release_scales(8, ReleaseConfig.model_construct(clip_norm=1.0, label_scale=1.0))


def _clusters(n: int, seed: int):
    """Clean latents: class c of 3 sits at a known mean with a small known spread."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.6, 0.0, -0.4], [-0.5, 0.5, 0.0], [0.0, -0.6, 0.5]])
    y = rng.integers(0, 3, n)
    z = means[y] + 0.15 * rng.normal(size=(n, 3))
    return z, y, means


def test_deconvolution_recovers_class_conditional_latents_under_heavy_noise() -> None:
    n, noise, label_noise = 30000, 0.8, 1.5
    z, y, means = _clusters(n, 0)
    rng = np.random.default_rng(1)
    noisy = z + noise * rng.normal(size=z.shape)
    label_vectors = np.eye(3)[y] + label_noise * rng.normal(size=(n, 3))
    assert (label_vectors.argmax(1) == y).mean() < 0.6  # per-record labels are mostly noise
    mix = fit_deconvolved_mixture(
        noisy,
        label_vectors,
        noise_std=noise,
        label_noise_std=label_noise,
        components_per_class=1,
        iterations=60,
        seed=0,
        progress=False,
    )
    labels = torch.arange(6000) % 3
    samples = mix.sample(labels, torch.Generator().manual_seed(0)).numpy()
    for c in range(3):
        got = samples[labels.numpy() == c]
        assert np.abs(got.mean(0) - means[c]).max() < 0.1
        # The clean spread (0.15), not the observed one (sqrt(0.15^2 + 0.8^2) = 0.81).
        assert 0.07 < got.std(0).mean() < 0.3
    # The naive reading (fit the noisy data with the noisy arg-max labels) is far off.
    naive = noisy[label_vectors.argmax(1) == 0]
    assert naive.std(0).mean() > 0.7


def test_release_model_reads_the_published_parquet(tmp_path) -> None:
    n = 3000
    z, y, _ = _clusters(n, 2)
    rng = np.random.default_rng(3)
    noisy = (z + 0.5 * rng.normal(size=z.shape)).astype(np.float32)
    lv = (np.eye(3)[y] + 0.5 * rng.normal(size=(n, 3))).astype(np.float32)
    uri = str(tmp_path / "latents.parquet")
    meta = {
        "kind": "dp_release",
        "noise_std_per_coordinate": 0.5,
        "label_noise_std_per_coordinate": 0.5,
    }
    write_latents(uri, noisy, lv.argmax(1), meta, seed=0, label_vectors=lv)
    stored = read_label_vectors(uri)
    assert stored.shape == (n, 3)
    cfg = Stage2Config(mixture_components=1, mixture_iterations=5)
    mix = fit_release_model(uri, cfg, seed=0, progress=False)
    assert mix.log_weights.numel() == 3 and mix.latent_dim == 3

    old = str(tmp_path / "old.parquet")
    write_latents(old, noisy, lv.argmax(1), {"kind": "dp_release"}, seed=0)
    assert read_label_vectors(old) is None
    with pytest.raises(ValueError, match="no released label vectors"):
        fit_release_model(old, cfg, seed=0, progress=False)


def test_release_noise_is_drawn_from_the_mechanism_key() -> None:
    """The noise is a function of the secret key alone: the same key repeats it exactly (what
    tests with fixed keys rely on), another key draws another noise."""
    rng = np.random.default_rng(4)
    z = rng.uniform(-1, 1, size=(200, 4)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    first, _ = _release(z, y, sigma=1.0, key=11)
    again, _ = _release(z, y, sigma=1.0, key=11)
    other, _ = _release(z, y, sigma=1.0, key=12)
    np.testing.assert_array_equal(first.latents, again.latents)
    np.testing.assert_array_equal(first.label_vectors, again.label_vectors)
    assert not np.allclose(first.latents, other.latents)
