"""The `dp-mixture` stage-2 model: it finds known components per class, records exactly its
planned releases, is calibrated so that their composition meets the target, and runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tdpdm_test_support import EventTally, tiny_run_overrides

from tdpdm.config import RunConfig
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dp_mixture import (
    MIXTURE_STAGE,
    DPMixture,
    MixturePlan,
    assign_classes,
    fit_dp_mixture,
    mixture_model,
    release_round,
    round_features,
)
from tdpdm.stages.dp_moments import CENTRES_STAGE, MOMENTS_STAGE

# Two classes, each two tight components of unequal weight, far apart (and apart from the other
# class's); the class means differ, so a fit that mixed classes up would miss every centre.
TRUE_MEANS = np.array(
    [[[0.5, 0.5, 0.0, 0.0], [-0.5, 0.5, 0.0, 0.0]], [[0.0, -0.5, 0.6, 0.2], [0.0, -0.5, -0.6, 0.2]]]
)
TRUE_WEIGHTS = np.array([[0.3, 0.7], [0.6, 0.4]])


def _toy(n: int = 4000, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    comp = (rng.random(n) > TRUE_WEIGHTS[labels, 0]).astype(int)
    z = TRUE_MEANS[labels, comp] + 0.05 * rng.normal(size=(n, 4))
    return z, labels


def _fit(plan, tally, covariance="full", key=None):
    z, labels = _toy()
    return fit_dp_mixture(
        z, labels, num_classes=2, components=2, covariance=covariance, plan=plan,
        session=tally, key=key or MechanismKey.fresh("test-mixture"),
    )  # fmt: skip


def test_each_record_adds_one_vector_of_norm_at_most_one_to_one_row():
    """The per-round sensitivity the accounting assumes (corners of [-1, 1]^d: the worst case)."""
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.choice([-1.0, 1.0], size=(50, 7)), rng.uniform(-3, 3, (50, 7))])
    norms = np.linalg.norm(round_features(z), axis=1)
    assert norms.max() <= 1.0 + 1e-12 and norms.max() > 0.99
    labels, comp = rng.integers(0, 3, 100), rng.integers(0, 2, 100)
    plan, tally = MixturePlan(1e-12), EventTally()
    args = {"num_classes": 3, "components": 2, "plan": plan, "session": tally}
    full = release_round(z, labels, comp, key=MechanismKey("r", 1), **args)
    less = release_round(z[1:], labels[1:], comp[1:], key=MechanismKey("r", 1), **args)
    moved = np.abs(full - less) > 1e-9
    assert moved.any(axis=1).sum() == 1 and moved[labels[0] * 2 + comp[0]].any()
    assert np.linalg.norm(full - less) <= 1.0 + 1e-9
    assert tally.events == [plan.round_event()] * 2


def test_recovers_the_components_of_each_class_at_large_epsilon():
    for covariance in ("full", "diagonal"):
        weights, means, covs = _fit(MixturePlan(1e-3), EventTally(), covariance)
        for c in range(2):
            # Components are unordered: match each true centre to its nearest fitted one.
            dist = np.linalg.norm(TRUE_MEANS[c][:, None] - means[c][None], axis=2)
            match = dist.argmin(axis=1)
            assert sorted(match) == [0, 1], (c, means[c])
            assert dist[[0, 1], match].max() < 0.02, (c, covariance, means[c])
            assert np.allclose(weights[c][match], TRUE_WEIGHTS[c], atol=0.03)
            # The within-class covariance is the components' (0.05^2), not the class spread.
            assert np.all(np.linalg.eigvalsh(covs[c]) < 0.0035), covs[c]


def test_records_the_planned_releases_with_noise_from_its_key():
    plan = MixturePlan(0.7, rounds=3)
    tally = EventTally()
    a = _fit(plan, tally, key=MechanismKey("m", 3))
    b = _fit(plan, EventTally(), key=MechanismKey("m", 3))
    c = _fit(plan, EventTally(), key=MechanismKey("m", 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.allclose(a[1], c[1])
    rounds = GaussianEvent(plan.round_noise_multiplier, count=1, stage=MIXTURE_STAGE)
    assert plan.round_noise_multiplier == pytest.approx(2.1)
    assert tally.events == [GaussianEvent(0.7, count=1, stage=MOMENTS_STAGE)] + [rounds] * 3
    planned = GaussianEvent(plan.round_noise_multiplier, 3, MIXTURE_STAGE)
    assert plan.events() == [tally.events[0], planned]


def test_the_calibrated_plan_composes_to_the_target():
    cfg = RunConfig(epsilon=4.0)
    spent = [PoissonGaussianEvent(1.0, sampling_rate=0.02, steps=100, stage="encoder")]
    plan = DPMixture().plan(cfg, 10_000, Adjacency.ADD_REMOVE, 1e-5, spent)
    assert [e.stage for e in plan.events()] == [CENTRES_STAGE, MOMENTS_STAGE, MIXTURE_STAGE]
    assert plan.events()[2].count == plan.rounds
    total = compute_epsilon([*spent, *plan.events()], 1e-5, Adjacency.ADD_REMOVE).epsilon
    assert 3.9 < total <= 4.0
    # Less noise would overspend: the T rounds are part of the composition, not free.
    tighter = MixturePlan(plan.noise_multiplier * 0.97, centred=True).events()
    assert compute_epsilon([*spent, *tighter], 1e-5, Adjacency.ADD_REMOVE).epsilon > 4.0


def test_the_sampler_draws_each_class_from_its_own_components():
    weights, means, covs = _fit(MixturePlan(1e-3), EventTally())
    model = mixture_model(weights, means, covs)
    labels = torch.tensor([0] * 2000 + [1] * 2000)
    z = model.sample(labels, generator=torch.Generator().manual_seed(0)).numpy()
    for c in range(2):
        zc = z[2000 * c : 2000 * (c + 1)]
        near = np.linalg.norm(zc[:, None] - TRUE_MEANS[c][None], axis=2).min(axis=1)
        assert np.quantile(near, 0.99) < 0.3
        share = (np.linalg.norm(zc - TRUE_MEANS[c][0], axis=1) < 0.3).mean()
        assert abs(share - TRUE_WEIGHTS[c][0]) < 0.05


def test_a_private_run_with_dp_mixture(tmp_path, shared_datasets):
    """A real tiny run: stage 1, the moments release and the rounds, within the target."""
    from tdpdm.config import load_config
    from tdpdm.pipeline import run_pipeline

    overrides = tiny_run_overrides(
        tmp_path,
        shared_datasets,
        "private",
        subset=800,
        seed=0,
        settings={
            "stage2.private_model": "dp-mixture",
            "stage2.mixture_components": 2,
            "evaluation.synthetic_count": 100,
        },
    )
    cfg = load_config(None, overrides)
    report = run_pipeline(cfg, log=lambda m: None).report
    events = report["privacy"]["events"]
    # One event per release as it ran: the centred moments' two (the default), then each of
    # the 3 rounds.
    release0 = [CENTRES_STAGE, MOMENTS_STAGE]
    assert [e["stage"] for e in events] == ["encoder", *release0] + [MIXTURE_STAGE] * 3
    assert all(e["count"] == 1 for e in events[1:])
    assert report["privacy"]["epsilon"] <= cfg.epsilon
    assert (tmp_path / "out" / "release" / "models" / "diffusion.pt").is_file()


def test_per_component_covariances_from_one_more_release():
    """`mixture_covariance: component`: release T+1 gives each component its own spread (here
    0.05 and 0.15 within one class), and is accounted as one more Gaussian event."""
    from tdpdm.stages.dp_mixture import COMPONENTS_STAGE

    rng = np.random.default_rng(3)
    n = 6000
    labels = rng.integers(0, 2, n)
    comp = (rng.random(n) > TRUE_WEIGHTS[labels, 0]).astype(int)
    spread = np.array([0.05, 0.15])[comp][:, None]
    z = TRUE_MEANS[labels, comp] + spread * rng.normal(size=(n, 4))
    plan, tally = MixturePlan(1e-3, component_moments=True), EventTally()
    _, means, covs = fit_dp_mixture(
        z, labels, num_classes=2, components=2, covariance="full", plan=plan, session=tally,
        key=MechanismKey.fresh("test-mixture"),
    )  # fmt: skip
    assert covs.shape == (2, 2, 4, 4)
    for c in range(2):
        dist = np.linalg.norm(TRUE_MEANS[c][:, None] - means[c][None], axis=2)
        match = dist.argmin(axis=1)
        assert sorted(match) == [0, 1]
        for k, want in enumerate([0.05, 0.15]):
            got = np.sqrt(np.linalg.eigvalsh(covs[c, match[k]]).mean())
            assert abs(got - want) < 0.3 * want, (c, k, got)
    assert tally.events[-1] == GaussianEvent(1e-3, count=1, stage=COMPONENTS_STAGE)
    assert plan.events()[-1] == tally.events[-1] and len(plan.events()) == 3
    cfg = RunConfig(epsilon=4.0, stage2={"mixture_covariance": "component"})
    spent = [PoissonGaussianEvent(1.0, sampling_rate=0.02, steps=100, stage="encoder")]
    planned = DPMixture().plan(cfg, 10_000, Adjacency.ADD_REMOVE, 1e-5, spent)
    total = compute_epsilon([*spent, *planned.events()], 1e-5, Adjacency.ADD_REMOVE).epsilon
    assert planned.component_moments and 3.9 < total <= 4.0


def _symmetric_noise(rng, d: int, tau: float) -> np.ndarray:
    """The release's noise on a summed z z^T / n: std tau off the diagonal, sqrt(2) tau on it."""
    upper = np.triu(rng.normal(0.0, tau, (d, d)), 1)
    return upper + upper.T + np.diag(rng.normal(0.0, np.sqrt(2.0) * tau, d))


def test_denoised_difference_drops_what_is_pure_noise():
    """A component whose covariance equals the class's gets the class's back, not the noise
    (whose eigenvalues, up to 2 tau sqrt(d), would dwarf a latent's small variances)."""
    from tdpdm.stages.dp_mixture import denoised_difference

    rng, d, tau = np.random.default_rng(0), 60, 0.01
    base = 0.05 * np.eye(d)
    noise = _symmetric_noise(rng, d, tau)
    out = denoised_difference(base + noise, base, tau)
    assert np.linalg.norm(out - base) < 0.1 * np.linalg.norm(noise)
    assert np.allclose(out, out.T)


def test_denoised_difference_keeps_a_direction_above_the_noise_edge():
    """A component that is wider than its class along one direction keeps that direction, at
    about its true size, and the error falls far below the raw noisy estimate's."""
    from tdpdm.stages.dp_mixture import denoised_difference

    rng, d, tau = np.random.default_rng(1), 60, 0.01
    base = 0.05 * np.eye(d)
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    theta = 3.0 * tau * np.sqrt(d)  # 1.5 x the noise edge
    truth = base + theta * np.outer(v, v)
    noisy = truth + _symmetric_noise(rng, d, tau)
    out = denoised_difference(noisy, base, tau)
    top = np.linalg.eigvalsh(out - base)[-1]
    assert abs(top - theta) < 0.2 * theta
    assert np.linalg.norm(out - truth) < 0.5 * np.linalg.norm(noisy - truth)


def test_covariance_noise_scale_matches_the_release():
    """The scale the denoiser assumes is the real noise on an off-diagonal entry of a summed
    z z^T read back from a release (pure noise table: no records)."""
    from tdpdm.stages.dp_mixture import covariance_noise_scale
    from tdpdm.stages.dp_moments import MomentScales, gaussians_from_moments

    d, sigma, n = 6, 0.7, 200_000
    scales = MomentScales.for_latent(d, 0.5)
    rng = np.random.default_rng(2)
    p = 1 + d + d * (d + 1) // 2
    table = rng.normal(0.0, sigma, (n, p))
    table[:, 0] = scales.count  # a count of exactly one record a row, so cov = raw second moment
    table[:, 1 : 1 + d] = 0.0
    _, covs = gaussians_from_moments(table, d, "full", scales, floor=False)
    tau = covariance_noise_scale(sigma, scales)
    assert abs(covs[:, 0, 1].std() / tau - 1) < 0.02
    assert abs(covs[:, 2, 2].std() / (np.sqrt(2) * tau) - 1) < 0.02


def test_initial_ratio_sets_the_noise_of_release_zero_only():
    """`initial_ratio` moves budget between release 0 and the last one; the fit records release 0
    at that noise, and the rounds and the component release keep theirs."""
    plan, tally = MixturePlan(0.5, component_moments=True, initial_ratio=3.0), EventTally()
    first, rounds, components = plan.events()
    assert first == GaussianEvent(1.5, count=1, stage=MOMENTS_STAGE)
    assert rounds.noise_multiplier == 1.5 and components.noise_multiplier == 0.5
    _fit(plan, tally)
    assert tally.events[0] == first and tally.events[-1] == components


def test_the_number_of_rounds_comes_from_the_config():
    """`stage2.mixture_rounds` sets T: the plan's round event counts T releases and the
    calibration still composes to the target."""
    cfg = RunConfig(epsilon=4.0, stage2={"mixture_rounds": 2})
    spent = [PoissonGaussianEvent(1.0, sampling_rate=0.02, steps=100, stage="encoder")]
    plan = DPMixture().plan(cfg, 10_000, Adjacency.ADD_REMOVE, 1e-5, spent)
    assert plan.rounds == 2 and plan.events()[-1].count == 2
    total = compute_epsilon([*spent, *plan.events()], 1e-5, Adjacency.ADD_REMOVE).epsilon
    assert 3.9 < total <= 4.0


def test_spherical_assignment_is_euclidean_where_mahalanobis_follows_the_long_axis():
    """A class covariance long along x: by Mahalanobis distance a record at (2.5, 0) belongs
    to the centre at the origin (2.5 along the long axis is near), by the spherical rule to the
    centre at (3, 0.5) (Euclidean 0.71 against 2.5)."""
    z, labels = np.array([[2.5, 0.0]]), np.array([0])
    weights, means = np.array([[0.5, 0.5]]), np.array([[[0.0, 0.0], [3.0, 0.5]]])
    covs = np.array([np.diag([100.0, 0.01])])
    assert assign_classes(z, labels, weights, means, covs)[0] == 0
    assert assign_classes(z, labels, weights, means, covs, "spherical")[0] == 1


def test_the_assignment_rule_comes_from_the_config_and_is_free():
    """`stage2.mixture_assignment` reaches the plan without changing its releases (the rule
    reads only released parameters), and a spherical fit still finds the toy's components."""
    spent = [PoissonGaussianEvent(1.0, sampling_rate=0.02, steps=100, stage="encoder")]
    configs = {
        r: RunConfig(epsilon=4.0, stage2={"mixture_assignment": r})
        for r in ("mahalanobis", "spherical")
    }
    plans = {
        r: DPMixture().plan(c, 10_000, Adjacency.ADD_REMOVE, 1e-5, spent)
        for r, c in configs.items()
    }
    assert plans["spherical"].assignment == "spherical"
    assert plans["spherical"].events() == plans["mahalanobis"].events()
    _, means, _ = _fit(MixturePlan(1e-3, assignment="spherical"), EventTally())
    for c in range(2):
        dist = np.linalg.norm(TRUE_MEANS[c][:, None] - means[c][None], axis=2)
        assert dist.min(axis=1).max() < 0.02, means[c]
