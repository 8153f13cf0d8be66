"""The `dp-moments` stage-2 model: bounded sensitivity, exact moments without noise, one
recorded release drawn from its secret key, and a real pipeline run with it."""

from __future__ import annotations

import numpy as np
import pytest
from tdpdm_test_support import EventTally, tiny_run_overrides

from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dp_moments import (
    CENTRES_STAGE,
    MOMENTS_STAGE,
    MomentScales,
    MomentsPlan,
    clip_latents,
    gaussians_from_moments,
    moment_features,
    release_moments,
)


def _latents(n: int = 3000, d: int = 6, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.uniform(-0.6, 0.6, size=(classes, d))
    z = np.tanh(centres[labels] + 0.3 * rng.normal(size=(n, d)))
    return z, labels


@pytest.mark.parametrize("covariance", ["diagonal", "full", "pooled"])
@pytest.mark.parametrize("radius", [1.0, 0.5, 0.2])
def test_every_record_vector_has_norm_at_most_one(covariance, radius):
    """The sensitivity the accounting assumes, for any clip radius (0.2 x sqrt(7) < 1 takes the
    diagonal bound's other branch): the worst case is a latent on the clip sphere."""
    rng = np.random.default_rng(1)
    scales = MomentScales.for_latent(7, radius)
    r2 = scales.radius**2  # the diagonal's worst case: floor(r2) ones, the rest on one more
    peaked = np.zeros((1, 7))
    peaked[0, : int(r2)] = 1.0
    peaked[0, min(int(r2), 6)] += np.sqrt(r2 - int(r2))
    z = np.concatenate([rng.choice([-1.0, 1.0], size=(50, 7)), rng.uniform(-3, 3, (50, 7)), peaked])
    norms = np.linalg.norm(moment_features(z, covariance, scales), axis=1)
    assert norms.max() <= 1.0 + 1e-12
    assert norms.max() > 0.99  # and the bound is tight (not a loose, wasteful scaling)


def test_clipping_bounds_the_norm_and_keeps_short_latents():
    z = np.array([[0.1, 0.2, 0.0], [1.0, 1.0, 1.0], [5.0, -5.0, 0.0]])
    clipped = clip_latents(z, radius=1.0)
    assert np.allclose(clipped[0], z[0])
    assert np.allclose(np.linalg.norm(clipped[1:], axis=1), 1.0)
    assert np.allclose(clipped[2], [np.sqrt(0.5), -np.sqrt(0.5), 0.0])  # box first, then ball


@pytest.mark.parametrize("radius", [1.0, 0.3])
def test_without_noise_pooled_is_the_within_class_covariance(radius):
    z, labels = _latents()
    scales = MomentScales.for_latent(z.shape[1], radius)
    noisy = release_moments(
        z, labels, num_classes=3, covariance="pooled", plan=MomentsPlan(1e-12),
        session=EventTally(), key=MechanismKey("t", 1), scales=scales,
    )  # fmt: skip
    means, covs = gaussians_from_moments(noisy, z.shape[1], "pooled", scales)
    zc = clip_latents(z, scales.radius)
    centred = zc - np.stack([zc[labels == c].mean(0) for c in range(3)])[labels]
    within = centred.T @ centred / len(z)
    for c in range(3):
        assert np.allclose(means[c], zc[labels == c].mean(0), atol=1e-9)
        assert np.allclose(covs[c], within, atol=1e-6)
    if radius < 1:
        assert not np.allclose(zc, z)  # the clip did bite: the moments are of clipped latents


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_without_noise_the_class_gaussians_are_the_empirical_ones(covariance):
    z, labels = _latents()
    noisy = release_moments(
        z,
        labels,
        num_classes=3,
        covariance=covariance,
        plan=MomentsPlan(1e-12),
        session=EventTally(),
        key=MechanismKey("t", 1),
    )
    means, covs = gaussians_from_moments(noisy, z.shape[1], covariance)
    for c in range(3):
        zc = z[labels == c]
        assert np.allclose(means[c], zc.mean(0), atol=1e-9)
        empirical = np.cov(zc.T, bias=True)
        want = np.diag(np.diag(empirical)) if covariance == "diagonal" else empirical
        assert np.allclose(
            covs[c], np.maximum(want, 0) if covariance == "diagonal" else want, atol=1e-6
        )


def test_one_release_recorded_and_noise_from_the_key():
    z, labels = _latents(300, d=20)  # 3 x 252 noisy entries: the std is estimated to ~2.5 %
    tally = EventTally()
    args = {"num_classes": 3, "covariance": "full", "plan": MomentsPlan(2.0), "session": tally}
    a = release_moments(z, labels, key=MechanismKey("m", 5), **args)
    b = release_moments(z, labels, key=MechanismKey("m", 5), **args)
    c = release_moments(z, labels, key=MechanismKey.fresh("stage2-moments"), **args)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert tally.events == [GaussianEvent(2.0, count=1, stage=MOMENTS_STAGE)] * 3
    clean = release_moments(
        z, labels, key=MechanismKey("m", 5), **(args | {"plan": MomentsPlan(1e-12)})
    )
    assert abs(np.std(a - clean) - 2.0) < 0.2  # the planned noise std (multiplier x 1)


def test_a_private_run_with_dp_moments(tmp_path, shared_datasets):
    """A real tiny run: the plan spends stage 1 + the centred moments' two releases (the
    default), within the target."""
    from tdpdm.config import load_config
    from tdpdm.pipeline import run_pipeline

    overrides = tiny_run_overrides(
        tmp_path,
        shared_datasets,
        "private",
        subset=800,
        seed=0,
        settings={"stage2.private_model": "dp-moments", "evaluation.synthetic_count": 100},
    )
    cfg = load_config(None, overrides)
    report = run_pipeline(cfg, log=lambda m: None).report
    stages = [e["stage"] for e in report["privacy"]["events"]]
    assert stages == ["encoder", CENTRES_STAGE, MOMENTS_STAGE]
    assert report["privacy"]["epsilon"] <= cfg.epsilon
    assert (tmp_path / "out" / "release" / "models" / "diffusion.pt").is_file()
