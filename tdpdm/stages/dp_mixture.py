"""Stage 2 as a DP class-conditional Gaussian mixture: `components` per class, fitted by a few
rounds of DP hard EM (issue 13).

Releases, all Gaussian mechanisms on per-record vectors of norm <= 1 (the dp-moments argument):
  0. the dp-moments table (per class count, sum and second moment; `dp_moments.py`), once;
  1..T. per round, per (class, component) row, the count and sum of the records assigned to it,
     v = [1, z / sqrt(d)] / sqrt(2) with z clamped to [-1, 1]^d, so ||v|| <= 1. Each record adds
     one v to exactly one row (its own class's component nearest under the *released* model of
     the round before), so adding or removing a record moves the table by at most 1.
The assignment reads only public (already released) parameters and the record itself, so each
round is one Gaussian mechanism with sensitivity 1: T + 1 events that the accountant composes.

Covariance structure: every component of a class shares one within-class covariance, the DP class
covariance of release 0 minus the between-component scatter of the round-T means. The class second
moment does not depend on the assignment, so it is released once, and the rounds release only
counts and sums (d + 1 entries a component): their noise multiplier is `ROUND_NOISE_RATIO` times
release 0's, as means averaged over thousands of records stand far more noise than covariances.

`mixture_covariance: component` adds release T+1: the dp-moments table again, but per (class,
component) row under the round-T assignment (each record still adds one vector of norm <= 1 to
one row), from which every component gets its own covariance, mean and weight. It is accounted
at release 0's noise multiplier; a component with fewer than `MIN_COVARIANCE_COUNT` noisy records
keeps the shared within-class covariance. A component's few hundred records leave its covariance
noisier than its small eigenvalues (`denoised_difference`), so it keeps only the directions in
which it differs from the class covariance by more than the noise can explain (MNIST, epsilon
10, 4 a class: 94.5 % against 93.6 % undenoised and 92.8 % for dp-moments on a 20k-sample screen;
on the full protocol 95.3 %, a tie with dp-moments, while the noiseless fit of 8 a class reaches
97.1 %; RESULTS.md, session 9).

Centred (`moments_centred`, the default): release 0 is dp-moments' two centred releases, and
release T+1 sums each record's moments about its component's round-T mean (public), clipped to
rho^2 = clip_ratio x the trace of the class's shared within covariance (public): on MNIST with
8 a class rho^2 is 3 to 7.5 against R^2 = 24.5, so the per-component covariances carry a
quarter of the noise or less (screening and protocol figures: RESULTS.md, session 10).

Initialisation is post-processing of release 0: each class Gaussian is split along its top
principal axes (+/- 0.8 standard deviations, the means of a Gaussian's two halves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tdpdm.config import RunConfig
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.calibration import calibrate_noise
from tdpdm.privacy.events import Event, GaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages.context import RunContext
from tdpdm.stages.deconvolve import LatentMixture
from tdpdm.stages.dp_moments import (
    CLIP_RATIO,
    VARIANCE_FLOOR,
    MomentScales,
    MomentsPlan,
    class_gaussians,
    clip_radii,
    gaussians_about_centres,
    gaussians_from_moments,
    release_centred,
    release_moments,
)
from tdpdm.stages.row_sums import row_sums, summed_where

MIXTURE_STAGE = "mixture_rounds"
MIXTURE_ROUNDS = 3
"""DP hard-EM rounds (T): each is one Gaussian release."""
ROUND_NOISE_RATIO = 3.0
"""Rounds' noise multiplier over release 0's: T rounds then cost T / 9 of one release."""
SPLIT = 0.8
MIN_COUNT = 1.0
"""A component whose noisy count is below this is dropped (weight 0): post-processing."""
COMPONENTS_STAGE = "mixture_components"
MIN_COVARIANCE_COUNT = 200.0
"""Fewer noisy records than this: a component keeps the class's shared covariance."""


@dataclass(frozen=True)
class MixturePlan:
    """Release 0 (the class moments) and `rounds` releases of component counts and sums."""

    noise_multiplier: float
    rounds: int = MIXTURE_ROUNDS
    ratio: float = ROUND_NOISE_RATIO
    component_moments: bool = False
    """Release T+1: per-component moments (`mixture_covariance: component`)."""
    initial_ratio: float = 1.0
    """Release 0's noise multiplier over `noise_multiplier`: with per-component moments it
    only seeds the rounds and gives the class covariance the components are denoised toward."""
    centred: bool = False
    """Second moments about public centres (`moments_centred`): release 0 becomes dp-moments'
    two centred releases, and release T+1 is centred on the round-T means."""
    clip_ratio: float = CLIP_RATIO
    assignment: str = "mahalanobis"
    """How a record picks its component (`mixture_assignment`; post-processing, no cost)."""

    def moments_plan(self, noise_multiplier: float) -> MomentsPlan:
        return MomentsPlan(noise_multiplier, centred=self.centred, clip_ratio=self.clip_ratio)

    @property
    def round_noise_multiplier(self) -> float:
        return self.ratio * self.noise_multiplier

    @property
    def initial_noise_multiplier(self) -> float:
        return self.initial_ratio * self.noise_multiplier

    def round_event(self) -> GaussianEvent:
        return GaussianEvent(self.round_noise_multiplier, count=1, stage=MIXTURE_STAGE)

    def events(self) -> list[Event]:
        first = self.moments_plan(self.initial_noise_multiplier).events()
        rounds = GaussianEvent(self.round_noise_multiplier, self.rounds, MIXTURE_STAGE)
        if not self.component_moments:
            return [*first, rounds]
        return [*first, rounds, self.components_event()]

    def components_event(self) -> GaussianEvent:
        return GaussianEvent(self.noise_multiplier, count=1, stage=COMPONENTS_STAGE)


def _floored(cov: np.ndarray, diagonal: bool) -> np.ndarray:
    if diagonal:
        return np.diag(np.maximum(np.diag(cov), VARIANCE_FLOOR))
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    return (vecs * np.maximum(vals, VARIANCE_FLOOR)) @ vecs.T


def initial_means(mean: np.ndarray, cov: np.ndarray, components: int) -> np.ndarray:
    """(K, d) starting centres of one class: its DP Gaussian split along its top axes."""
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    out = np.repeat(mean[None], components, axis=0)
    for k in range(components - components % 2):
        axis = order[(k // 2) % len(order)]
        out[k] += (1 if k % 2 == 0 else -1) * SPLIT * math.sqrt(max(vals[axis], 0)) * vecs[:, axis]
    return np.clip(out, -1.0, 1.0)


def assign(z: np.ndarray, means: np.ndarray, log_w: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Hard EM: each row's most likely component under N(means[k], cov) with weights."""
    chol = np.linalg.cholesky(cov)
    y = np.linalg.solve(chol, z.T).T
    m = np.linalg.solve(chol, means.T).T
    cost = (y * y).sum(1)[:, None] - 2 * y @ m.T + (m * m).sum(1)[None] - 2 * log_w[None]
    return np.argmin(cost, axis=1)


def assign_classes(z, labels, weights, means, class_covs, assignment="mahalanobis"):
    """Each record's component within its own class, under the last released model.

    `spherical` replaces a class's covariance by its mean variance times the identity: k-means'
    Euclidean distance with the weights' log prior. The shared within covariance is the class
    covariance minus the components' scatter: its long axes are those the split left
    unexplained, and a Mahalanobis rule discounts distance along them (Fashion-MNIST latents,
    the procedure without noise: 82.1 % against 81.9 %, one draw each; RESULTS.md, session 15)."""
    comp = np.zeros(len(z), dtype=np.int64)
    for c in range(len(means)):
        rows = labels == c
        if rows.any():
            log_w = np.log(np.maximum(weights[c], 1e-300))
            cov = class_covs[c]
            if assignment == "spherical":
                cov = np.eye(len(cov)) * max(np.trace(cov) / len(cov), VARIANCE_FLOOR)
            comp[rows] = assign(z[rows], means[c], log_w, cov)
    return comp


def round_features(z: np.ndarray) -> np.ndarray:
    """(n, 1 + d) per-record vectors [1, z / sqrt(d)] / sqrt(2), of norm <= 1."""
    z = np.clip(np.asarray(z, dtype=np.float64), -1.0, 1.0)
    n, d = z.shape
    return np.concatenate([np.ones((n, 1)), z / math.sqrt(d)], axis=1) / math.sqrt(2.0)


def release_round(z, labels, comp, *, num_classes, components, plan, session, key) -> np.ndarray:
    """The noisy (classes * components, 1 + d) table: each record's `round_features` added to
    the one row of its class and assigned component."""
    table = row_sums(labels * components + comp, num_classes * components, round_features, z)
    noisy = table + key.numpy().normal(0.0, plan.round_noise_multiplier, size=table.shape)
    session.record(plan.round_event())
    return noisy


def fit_dp_mixture(
    z: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    components: int,
    covariance: str,
    plan: MixturePlan,
    session: PrivacySession,
    key: MechanismKey,
    scales: MomentScales | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (C, K), means (C, K, d), covariances (C, K, d, d)); records the planned
    releases on `session`."""
    z = np.clip(np.asarray(z, dtype=np.float64), -1.0, 1.0)
    labels = np.asarray(labels, dtype=np.int64)
    d, diagonal = z.shape[1], covariance == "diagonal"
    scales = scales or MomentScales.for_latent(d)
    class_means, class_covs = class_gaussians(
        z, labels, num_classes=num_classes, covariance=covariance,
        plan=plan.moments_plan(plan.initial_noise_multiplier), session=session,
        key=key.child("moments"), scales=scales,
    )  # fmt: skip
    # Everything below until the next release is post-processing of released values.
    weights = np.full((num_classes, components), 1.0 / components)
    means = np.stack([initial_means(class_means[c], class_covs[c], components)
                      for c in range(num_classes)])  # fmt: skip
    covs = class_covs.copy()
    for t in range(plan.rounds):
        comp = assign_classes(z, labels, weights, means, covs, plan.assignment)
        table = release_round(
            z, labels, comp, num_classes=num_classes, components=components, plan=plan,
            session=session, key=key.child("round", t),
        ).reshape(num_classes, components, 1 + d) * math.sqrt(2.0)  # fmt: skip
        counts = table[..., 0]
        alive = counts >= MIN_COUNT
        sums = table[..., 1:] * math.sqrt(d)
        new_means = np.clip(sums / np.maximum(counts, MIN_COUNT)[..., None], -1.0, 1.0)
        means = np.where(alive[..., None], new_means, class_means[:, None])
        for c in range(num_classes):
            w = np.where(alive[c], counts[c], 0.0)
            weights[c] = w / w.sum() if w.sum() > 0 else np.eye(components)[0]
            centre = weights[c] @ means[c]
            dev = means[c] - centre
            between = (dev * weights[c][:, None]).T @ dev
            covs[c] = _floored(class_covs[c] - between, diagonal)
    covs = np.repeat(covs[:, None], components, axis=1)
    if plan.component_moments:
        weights, means, covs = _component_gaussians(
            z, labels, weights, means, covs, covariance=covariance, plan=plan, scales=scales,
            session=session, key=key.child("components"),
        )  # fmt: skip
    return weights, means, covs


def _component_gaussians(z, labels, weights, means, covs, *, covariance, plan, scales, session,
                         key):  # fmt: skip
    """Release T+1 (see the module docstring): one Gaussian per (class, component) read off
    per-component moments; the assignment uses only the round-T model (released values)."""
    classes, components, d = means.shape
    comp = assign_classes(z, labels, weights, means, covs[:, 0], plan.assignment)
    rows, moments = labels * components + comp, MomentsPlan(plan.noise_multiplier)
    if plan.centred:  # about the round-T means, radii from the shared within-class spreads
        centres = means.reshape(-1, d)
        radii = clip_radii(np.trace(covs, axis1=2, axis2=3).ravel(), plan.clip_ratio, scales)
        noisy = release_centred(
            z, rows, centres=centres, radii=radii, covariance=covariance, plan=moments,
            session=_Relabelled(session, plan), key=key, scales=scales,
        )  # fmt: skip
        comp_means, comp_covs, counts = gaussians_about_centres(
            noisy, centres, radii, covariance, scales, floor=False
        )
        bounds = radii**2
    else:
        noisy = release_moments(
            z, rows, num_classes=classes * components, covariance=covariance, plan=moments,
            session=_Relabelled(session, plan), key=key, scales=scales,
        )  # fmt: skip
        comp_means, comp_covs = gaussians_from_moments(noisy, d, covariance, scales, floor=False)
        counts = noisy[:, 0] / scales.count
        bounds = np.full(len(counts), scales.second_bound("full"))
    counts, bounds = counts.reshape(classes, components), bounds.reshape(classes, components)
    comp_covs = comp_covs.reshape(classes, components, d, d)
    if covariance == "full":
        for c, k in np.ndindex(classes, components):
            noise = covariance_noise_scale(plan.noise_multiplier, scales, bounds[c, k])
            tau = noise / max(counts[c, k], MIN_COVARIANCE_COUNT)
            comp_covs[c, k] = denoised_difference(comp_covs[c, k], covs[c, k], tau)
    diagonal = covariance == "diagonal"
    for c, k in np.ndindex(classes, components):
        comp_covs[c, k] = _floored(comp_covs[c, k], diagonal)
    usable = (counts >= MIN_COVARIANCE_COUNT)[..., None]
    means = np.where(usable, comp_means.reshape(classes, components, d), means)
    covs = np.where(usable[..., None], comp_covs, covs)
    alive = counts >= MIN_COUNT
    for c in range(classes):
        w = np.where(alive[c], counts[c], 0.0)
        if w.sum() > 0:
            weights[c] = w / w.sum()
    return weights, means, covs


def covariance_noise_scale(
    noise_multiplier: float, scales: MomentScales, bound: float | None = None
) -> float:
    """Std of the release's noise on one off-diagonal entry of a summed z z^T (diagonal entries:
    sqrt(2) times it): the Gaussian noise times the second moments' scale `bound` (R^2 for
    `moment_features`, the row's rho^2 for `centred_features`)."""
    bound = scales.second_bound("full") if bound is None else bound
    return noise_multiplier * bound / (scales.second * math.sqrt(2.0))


def denoised_difference(noisy: np.ndarray, base: np.ndarray, tau: float) -> np.ndarray:
    """`base` plus the part of `noisy - base` that stands out of the release's noise.

    The noise on a component's covariance is a symmetric matrix with independent entries of std
    `tau` (off-diagonal; sqrt(2) tau on the diagonal): its eigenvalues fill [-2 tau sqrt(d),
    2 tau sqrt(d)] (the semicircle law), wider than the small eigenvalues of a latent covariance
    when a component has a few hundred records. So only the eigen-directions of the difference
    from the well-determined class covariance whose eigenvalue passes that edge are kept, each
    shrunk to the spike that would produce it (lambda = theta + d tau^2 / theta). Post-processing
    of released values and the public noise scale: no privacy cost."""
    d = noisy.shape[0]
    diff = noisy - base
    vals, vecs = np.linalg.eigh((diff + diff.T) / 2)
    edge = 2.0 * tau * math.sqrt(d)
    keep = np.abs(vals) > edge
    root = np.sqrt(np.maximum(vals**2 - edge**2, 0.0))
    spikes = np.where(keep, np.sign(vals) * (np.abs(vals) + root) / 2.0, 0.0)
    return base + (vecs * spikes) @ vecs.T


class _Relabelled:
    """Records release T+1 under its own stage name (dp-moments' release records its own)."""

    def __init__(self, session: PrivacySession, plan: MixturePlan) -> None:
        self.session, self.plan = session, plan

    def record(self, event: Event) -> None:
        self.session.record(self.plan.components_event())


def mixture_model(weights: np.ndarray, means: np.ndarray, covs: np.ndarray) -> LatentMixture:
    """The sampler: component (c, k) is class c's, with weight w[c, k] within its class."""
    classes, k, d = means.shape
    model = LatentMixture(classes * k, d, classes)
    model.log_weights.copy_(torch.from_numpy(np.log(np.maximum(weights, 1e-12))).float().ravel())
    model.means.copy_(torch.from_numpy(means.reshape(-1, d)).float())
    if covs.ndim == 3:  # one covariance a class, shared by its components
        covs = np.repeat(covs[:, None], k, axis=1)
    chol = np.linalg.cholesky(covs.reshape(-1, d, d))
    model.scale_tril.copy_(torch.from_numpy(chol).float())
    model.class_shares.copy_(torch.from_numpy(np.repeat(np.eye(classes), k, axis=0)).float())
    return model


class DPMixture:
    """The `dp-mixture` stage-2 model (private mode): see the module docstring."""

    name = "dp-mixture"
    needs_release = False

    def plan(
        self, cfg: RunConfig, n_records: int, adjacency: Adjacency, delta: float, spent: list[Event]
    ) -> MixturePlan:
        s2 = cfg.stage2
        options = {
            "rounds": s2.mixture_rounds,
            "component_moments": s2.mixture_covariance == "component",
            "centred": s2.moments_centred,
            "clip_ratio": s2.moments_clip_ratio,
            "assignment": s2.mixture_assignment,
        }
        sigma = calibrate_noise(
            lambda s: MixturePlan(s, **options).events(), cfg.epsilon, delta, adjacency,
            fixed_events=spent,
        )  # fmt: skip
        return MixturePlan(sigma, **options)

    def fit(self, ctx: RunContext, data, plan, session) -> LatentMixture:
        if not isinstance(plan, MixturePlan) or session is None:
            raise ValueError("dp-mixture reads private latents: it needs its plan and a session")
        s2 = ctx.cfg.stage2
        k, covariance = s2.mixture_components, s2.moments_covariance
        ctx.log(
            f"stage 2: DP class mixture ({k} components a class, {plan.rounds} hard-EM rounds, "
            f"{covariance} covariance per {s2.mixture_covariance}, {plan.assignment} "
            f"assignment, sigma "
            f"{plan.noise_multiplier:.3f} then {plan.round_noise_multiplier:.3f})"
        )
        where = summed_where()
        with ctx.timed("dp_mixture", dp_sgd=False, components=k, rounds=plan.rounds, sums=where):
            weights, means, covs = fit_dp_mixture(
                data.latents,
                data.labels,
                num_classes=ctx.spec.num_classes,
                components=k,
                covariance=covariance,
                plan=plan,
                session=session,
                key=MechanismKey.fresh("stage2-mixture"),
                scales=MomentScales.for_latent(data.latents.shape[1], s2.moments_radius),
            )
        return mixture_model(weights, means, covs)
