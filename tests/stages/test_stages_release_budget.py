"""Issue 14's loss budget for `released` runs (benchmarks/loss_budget_released.py) and the product
seams it stands on: the release's transform as pure functions (clean records put exactly where
the release puts them, public scales and clipping included) and the deconvolution told that a
part is clean (noise std 0).

A budget that re-noised the wrong part, at the wrong std, or fitted with the wrong std named
would blame the wrong stage; these tests fail for each of those on toy data with known classes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tdpdm_test_support import torch_threads

from tdpdm.config import ReleaseConfig, RunConfig
from tdpdm.models.lipschitz_vae import LipschitzVAE
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages import lipschitz_release
from tdpdm.stages import release as latent_release
from tdpdm.stages.artifacts import RunLayout, save_model
from tdpdm.stages.stage1_mechanisms import STAGE1_MECHANISMS

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "loss_budget_released.py"


@pytest.fixture(scope="module")
def budget():
    spec = importlib.util.spec_from_file_location("loss_budget_released", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:  # its dataclass looks its module up by name
        patch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


class _Recorder:
    def record(self, event) -> None:
        pass


def _no_noise(key, shape, std):
    return np.zeros(shape)


def _clusters(n: int, seed: int):
    rng = np.random.default_rng(seed)
    means = np.array([[0.6, 0.0, -0.4], [-0.5, 0.5, 0.0], [0.0, -0.6, 0.5]])
    y = rng.integers(0, 3, n)
    return means[y] + 0.15 * rng.normal(size=(n, 3)), y, means


# -- the release's transform, as pure functions ----------------------------------------------


def test_release_vectors_round_trip_the_public_scales_and_clip() -> None:
    cfg = ReleaseConfig(clip_norm=2.0, label_scale=0.6)
    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, size=(500, 8))
    y = rng.integers(0, 10, 500)
    v = latent_release.release_vectors(z, y, num_classes=10, cfg=cfg)
    assert np.linalg.norm(v, axis=1).max() <= 2.0 + 1e-12
    latents, label_vectors = latent_release.published_parts(v, 8, cfg)
    np.testing.assert_allclose(latents, z, atol=1e-12)
    np.testing.assert_allclose(label_vectors, np.eye(10)[y], atol=1e-12)
    # Out of the encoder's range, the vector is clipped to C as one, both parts shrink alike.
    big = latent_release.release_vectors(4 * z[:5], y[:5], num_classes=10, cfg=cfg)
    np.testing.assert_allclose(np.linalg.norm(big, axis=1), 2.0)
    lat, lab = latent_release.published_parts(big, 8, cfg)
    shrink = lab.max(axis=1)
    assert (shrink < 1).all()
    np.testing.assert_allclose(lat, 4 * z[:5] * shrink[:, None])


def test_release_seams_give_what_the_release_publishes_without_noise(monkeypatch) -> None:
    """The autoencoder's and the Lipschitz VAE's clean parts equal their release with the
    noise switched off (in this process, test-only)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 64)
    cfg = ReleaseConfig(clip_norm=1.0, label_scale=0.6)
    event = GaussianEvent(noise_multiplier=2.0, stage="latent_release")
    z = np.tanh(rng.normal(size=(64, 5))).astype(np.float32)
    monkeypatch.setattr(latent_release, "release_noise", _no_noise)
    out = latent_release.release_latents(
        z, y, num_classes=4, cfg=cfg, event=event, session=_Recorder(), key=MechanismKey("r", 1)
    )
    lat, lab = latent_release.published_parts(
        latent_release.release_vectors(z, y, num_classes=4, cfg=cfg), 5, cfg
    )
    np.testing.assert_array_equal(out.latents, lat.astype(np.float32))
    np.testing.assert_array_equal(out.label_vectors, lab.astype(np.float32))

    images = rng.integers(0, 256, size=(64, 28, 28)).astype(np.uint8)
    torch.manual_seed(0)
    model = LipschitzVAE(latent_dim=4, hidden=16)
    monkeypatch.setattr(lipschitz_release, "release_noise", _no_noise)
    rel = lipschitz_release.release(
        model,
        images,
        y,
        num_classes=4,
        label_scale=0.6,
        event=GaussianEvent(noise_multiplier=2.0, stage="lipschitz_release"),
        session=_Recorder(),
        seed=0,
        key=MechanismKey("l", 1),
    )
    lat, lab = lipschitz_release.clean_release(model, images, y, num_classes=4)
    np.testing.assert_allclose(rel.latents, lat, atol=1e-6)
    np.testing.assert_allclose(rel.label_vectors, lab, atol=1e-6)
    assert np.abs(lat).max() > 1e-3  # not trivially zero


# -- re-noising and fitting, rows b, c, d ----------------------------------------------------


def test_budget_inputs_renoise_only_the_named_part_at_its_std(budget) -> None:
    z, y, _ = _clusters(20000, 0)
    w = np.eye(3)[y]
    stds = {"noise_std": 0.7, "label_noise_std": 1.9, "seed": 3}
    x, lv, s, t = budget.budget_inputs("b", z, w, **stds)
    assert (s, t) == (0.0, 0.0) and x is z and lv is w
    x, lv, s, t = budget.budget_inputs("c", z, w, **stds)
    assert (s, t) == (0.0, 1.9) and x is z
    assert abs((lv - w).std() - 1.9) < 0.02 and abs((lv - w).mean()) < 0.02
    x, lv, s, t = budget.budget_inputs("d", z, w, **stds)
    assert (s, t) == (0.7, 0.0) and lv is w
    assert abs((x - z).std() - 0.7) < 0.01 and abs((x - z).mean()) < 0.01


@pytest.mark.parametrize(
    "row, tolerance", [("b", 0.02), ("c", 0.02), ("d", 0.04)], ids=["clean", "labels", "latents"]
)
def test_fits_told_the_std_present_recover_the_classes(budget, row, tolerance) -> None:
    z, y, means = _clusters(9000, 0)
    x, w, s, t = budget.budget_inputs(
        row, z, np.eye(3)[y], noise_std=0.5, label_noise_std=1.5, seed=1
    )
    # 150 iterations: with noisy labels alone the fit needs about that many to settle
    mix = budget.fit_row(x, w, s, t, components=1, iterations=150, seed=0)
    labels = torch.arange(6000) % 3
    samples = mix.sample(labels, torch.Generator().manual_seed(0)).numpy()
    assert np.isfinite(samples).all()
    for c in range(3):
        got = samples[labels.numpy() == c]
        assert np.abs(got.mean(0) - means[c]).max() < tolerance
        # the clean spread 0.15: not the observed sqrt(0.15^2 + 0.5^2) of row d's latents
        assert 0.12 < got.std(0).mean() < 0.18


# -- the rows on a (fake) finished run, both mechanisms ---------------------------------------


@pytest.mark.parametrize("mechanism", ["dpsgd-autoencoder", "lipschitz-vae"])
def test_released_budget_runs_every_row_on_a_run(budget, tmp_path, mechanism) -> None:
    cfg = RunConfig().replace(
        mode="released",
        stage1={"mechanism": mechanism, "latent_dim": 4, "width": 8, "vae_hidden": 16},
        stage2={"mixture_components": 2, "mixture_iterations": 5},
        evaluation={"synthetic_count": 300},
    )
    torch.manual_seed(0)
    model = STAGE1_MECHANISMS[mechanism].blank(cfg, 10)
    if mechanism == "lipschitz-vae":
        model.set_center()
    save_model(model, RunLayout(str(tmp_path)).autoencoder)
    report = {
        "mode": "released",
        "dataset": "mnist",
        "n_records": 200,
        "config": cfg.as_dict(),
        "latents": {"noise_std_per_coordinate": 0.4, "label_noise_std_per_coordinate": 1.2},
    }
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (500, 28, 28)).astype(np.uint8), np.arange(500) % 10)
    seen = []

    def cnn(images, labels):
        seen.append((images.shape, np.bincount(labels, minlength=10)))
        return 0.5

    out = budget.released_budget(
        str(tmp_path),
        json.loads(json.dumps(report)),
        [budget.row_letter(r) for r in ["real", "recon", "clean", "c", "d", "release"]],
        train,
        cnn,
        lambda: ("e_release", 0.25),
        synthetic=None,
        components=None,
        iterations=None,
        seed=0,
        device="cpu",
        log=print,
    )
    assert out["mechanism"] == mechanism and out["records"] == 200
    assert (out["components_per_class"], out["iterations"], out["synthetic"]) == (2, 5, 300)
    for key in budget.ROWS.values():
        assert out[key] == (0.25 if key == "e_release" else 0.5)
    # real and reconstructions: the run's record count; rows b-d: balanced synthetic samples
    assert [s[0][0] for s in seen] == [200, 200, 300, 300, 300]
    assert all((s[1] == 30).all() for s in seen[2:])
    with pytest.raises(SystemExit):
        budget.row_letter("f")
