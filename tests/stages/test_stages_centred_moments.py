"""Centred DP moments (`stage2.moments_centred`): release A (class centres and spreads) then
release B (second moments about those centres, clipped to a radius from the spread). Bounded
sensitivity, exact moments without noise, both events recorded, and the point of it: far less
covariance noise than the uncentred release at the same noise multiplier."""

from __future__ import annotations

import numpy as np
import pytest
from tdpdm_test_support import EventTally

from tdpdm.config import RunConfig
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dp_mixture import COMPONENTS_STAGE, MIXTURE_STAGE, MixturePlan, fit_dp_mixture
from tdpdm.stages.dp_moments import (
    CENTRE_SHARES,
    CENTRES_STAGE,
    MOMENTS_STAGE,
    DPMoments,
    MomentScales,
    MomentsPlan,
    centred_features,
    class_gaussians,
    clip_latents,
    clip_radii,
    release_centres,
)


def _offset_latents(n: int = 6000, d: int = 10, classes: int = 3, spread: float = 0.1):
    """Classes far from the origin with small spreads: the case centring is for."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    centres = rng.choice([-0.6, 0.6], size=(classes, d))
    return np.clip(centres[labels] + spread * rng.normal(size=(n, d)), -1, 1), labels


@pytest.mark.parametrize("covariance", ["diagonal", "full", "pooled"])
def test_every_centred_vector_has_norm_at_most_one(covariance):
    """Release B's sensitivity, for records near and far from their centre, any radius."""
    rng = np.random.default_rng(1)
    d = 7
    scales = MomentScales.for_latent(d, 0.5)
    z = np.concatenate([rng.choice([-1.0, 1.0], (50, d)), rng.uniform(-3, 3, (50, d))])
    axis = np.eye(d)[:1]  # a centred offset along an axis: the diagonal model's worst case
    z = np.concatenate([z, axis])
    centres = np.concatenate([rng.uniform(-0.5, 0.5, (100, d)), np.zeros((1, d))])
    radii = np.concatenate([rng.choice([0.05, 0.5, 2.0 * scales.radius], 100), [0.05]])
    norms = np.linalg.norm(centred_features(z, centres, radii, covariance, scales), axis=1)
    assert norms.max() <= 1.0 + 1e-12
    assert norms.max() > 0.99  # tight: a record on its clip sphere spends the whole unit


@pytest.mark.parametrize("covariance", ["full", "diagonal", "pooled"])
def test_without_noise_the_centred_gaussians_are_the_empirical_ones(covariance):
    z, labels = _offset_latents()
    scales = MomentScales.for_latent(z.shape[1], 1.0)
    plan = MomentsPlan(1e-12, centred=True, clip_ratio=1e6)  # radii 2R: nothing clipped
    means, covs = class_gaussians(
        z, labels, num_classes=3, covariance=covariance, plan=plan, session=EventTally(),
        key=MechanismKey("t", 1), scales=scales,
    )  # fmt: skip
    zc = clip_latents(z, scales.radius)
    centred = zc - np.stack([zc[labels == c].mean(0) for c in range(3)])[labels]
    for c in range(3):
        assert np.allclose(means[c], zc[labels == c].mean(0), atol=1e-9)
        empirical = np.cov(zc[labels == c].T, bias=True)
        want = {
            "full": empirical,
            "diagonal": np.diag(np.diag(empirical)),
            "pooled": centred.T @ centred / len(z),
        }[covariance]
        assert np.allclose(covs[c], want, atol=1e-6)


def test_both_releases_recorded_in_plan_order_with_noise_from_the_key():
    z, labels = _offset_latents(600)
    plan, tally = MomentsPlan(2.0, centred=True), EventTally()
    args = {"num_classes": 3, "covariance": "full", "plan": plan, "session": tally}
    a = class_gaussians(z, labels, key=MechanismKey("m", 5), scales=_scales(z), **args)
    b = class_gaussians(z, labels, key=MechanismKey("m", 5), scales=_scales(z), **args)
    c = class_gaussians(
        z, labels, key=MechanismKey.fresh("stage2-moments"), scales=_scales(z), **args
    )
    assert np.array_equal(a[1], b[1]) and not np.allclose(a[1], c[1])
    assert plan.events() == [
        GaussianEvent(6.0, count=1, stage=CENTRES_STAGE),
        GaussianEvent(2.0, count=1, stage=MOMENTS_STAGE),
    ]
    assert tally.events == plan.events() * 3


def _scales(z: np.ndarray) -> MomentScales:
    return MomentScales.for_latent(z.shape[1], 1.0)


def test_centring_cuts_the_covariance_noise():
    """Same noise multiplier, same data: the centred release's covariances are several times
    closer to the empirical ones (the noise scales with rho^2, not R^2)."""
    z, labels = _offset_latents()
    empirical = np.stack([np.cov(z[labels == c].T, bias=True) for c in range(3)])
    errors = {}
    for centred in (False, True):
        _, covs = class_gaussians(
            z, labels, num_classes=3, covariance="full",
            plan=MomentsPlan(1.0, centred=centred), session=EventTally(),
            key=MechanismKey("noise", 7), scales=_scales(z),
        )  # fmt: skip
        errors[centred] = np.linalg.norm(covs - empirical)
    assert errors[True] < errors[False] / 5, errors


def test_clip_radii_follow_the_spread_within_the_ball():
    scales = MomentScales.for_latent(4, 0.5)  # R = 1
    radii = clip_radii(np.array([0.1, 1.0, 100.0]), 2.5, scales)
    assert np.allclose(radii, [np.sqrt(0.25), np.sqrt(2.5), 2.0])


def test_the_calibrated_centred_plan_composes_to_the_target():
    cfg = RunConfig(epsilon=4.0, stage2={"moments_centred": True})
    spent = [PoissonGaussianEvent(1.0, sampling_rate=0.02, steps=100, stage="encoder")]
    plan = DPMoments().plan(cfg, 10_000, Adjacency.ADD_REMOVE, 1e-5, spent)
    assert plan.centred and [e.stage for e in plan.events()] == [CENTRES_STAGE, MOMENTS_STAGE]
    total = compute_epsilon([*spent, *plan.events()], 1e-5, Adjacency.ADD_REMOVE).epsilon
    assert 3.9 < total <= 4.0


def test_dp_mixture_centred_recovers_each_components_spread():
    """dp-mixture with centring: release 0 is the two centred releases, release T+1 is centred on
    the round-T means, and each component still gets its own spread (0.05 and 0.15)."""
    rng = np.random.default_rng(3)
    n = 6000
    labels = rng.integers(0, 2, n)
    true_means = np.array([[[0.5, 0.5, 0.0, 0.0], [-0.5, -0.5, 0.0, 0.0]],
                           [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, -0.5, -0.5]]])  # fmt: skip
    comp = (rng.random(n) > 0.5).astype(int)
    z = true_means[labels, comp] + np.array([0.05, 0.15])[comp][:, None] * rng.normal(size=(n, 4))
    plan, tally = MixturePlan(1e-3, component_moments=True, centred=True), EventTally()
    _, means, covs = fit_dp_mixture(
        z, labels, num_classes=2, components=2, covariance="full", plan=plan, session=tally,
        key=MechanismKey.fresh("test-mixture"),
    )  # fmt: skip
    for c in range(2):
        match = np.linalg.norm(true_means[c][:, None] - means[c][None], axis=2).argmin(axis=1)
        assert sorted(match) == [0, 1]
        for k, want in enumerate([0.05, 0.15]):
            got = np.sqrt(np.linalg.eigvalsh(covs[c, match[k]]).mean())
            assert abs(got - want) < 0.3 * want, (c, k, got)
    stages = [e.stage for e in tally.events]
    assert stages == [CENTRES_STAGE, MOMENTS_STAGE, *[MIXTURE_STAGE] * 3, COMPONENTS_STAGE]
    assert [e.stage for e in plan.events()] == [
        CENTRES_STAGE, MOMENTS_STAGE, MIXTURE_STAGE, COMPONENTS_STAGE,
    ]  # fmt: skip


def test_release_a_moves_by_at_most_one_per_record():
    """Release A's sensitivity: one record's contribution to its row (the noiseless table of a
    single record) has norm <= 1, and exactly 1 for a record on the clip sphere."""
    d = 5
    scales = MomentScales.for_latent(d, 0.5)
    tally = EventTally()
    for z in (np.full((1, d), 1.0), np.full((1, d), 0.1), np.array([[1.0, -1.0, 0, 0, 0]])):
        clean = release_centres(
            z, np.array([1]), num_rows=3, plan=MomentsPlan(1e-12, centred=True),
            session=tally, key=MechanismKey("a", 1), scales=scales,
        )  # fmt: skip
        counts, means, _ = clean
        assert abs(counts[1] - 1.0) < 1e-6
        assert np.allclose(means[1], clip_latents(z, scales.radius)[0], atol=1e-6)
    a, b, c = CENTRE_SHARES
    r = clip_latents(np.full((1, d), 1.0), scales.radius)
    feature = np.concatenate([[a], r[0] * b / scales.radius, [c * (r**2).sum() / scales.radius**2]])
    assert abs(np.linalg.norm(feature) - 1.0) < 1e-12  # the bound, tight on the sphere
    assert [e.stage for e in tally.events] == [CENTRES_STAGE] * 3


def test_centred_release_of_no_records_is_pure_noise():
    """An empty row set: the tables keep their shape (zeros plus noise), no crash."""
    z = np.zeros((0, 4))
    counts, means, spreads = release_centres(
        z, np.zeros(0, dtype=int), num_rows=2, plan=MomentsPlan(1.0, centred=True),
        session=EventTally(), key=MechanismKey("e", 1), scales=_scales(np.zeros((1, 4))),
    )  # fmt: skip
    assert counts.shape == (2,) and means.shape == (2, 4) and spreads.shape == (2,)
