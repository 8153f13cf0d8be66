"""Stage 2 from DP sufficient statistics: per class, the count, sum and second moment of the
private latents, released once with the Gaussian mechanism; one Gaussian per class is read off
them (post-processing) and sampled like the deconvolved mixture.

Seconds of compute, and its cost barely depends on epsilon because each class averages
thousands of records (DESIGN 8 measured 92 % on MNIST at epsilon 10 with full covariances).

Sensitivity. The autoencoder's tanh latent z lies in [-1, 1]^d (clamped here, so the bound never
rests on the encoder); it is then clipped to the L2 radius R = `moments_radius` x sqrt(d) (public;
a radius below the box's corner, sqrt(d), trades a little bias on rare far latents for much less
noise on every second moment, whose bound is R^2). Each record contributes one vector to its
class's row,
    v = [a, b z / R, c m(z) / B],   a^2 + b^2 + c^2 = 1    (`MomentScales`)
with m(z) = z*z and B^2 = floor(R^2) + frac(R^2)^2 (diagonal model: the largest sum z_i^4 in the
box and the ball), or m(z)
the upper triangle of z z^T with off-diagonal entries scaled by sqrt(2) and B = R^2 (full and
pooled models: ||m(z)|| = ||z||^2). So ||v|| <= 1: adding or removing a record moves the
(classes x p) table by at most 1 (replace-one: 2), and the release is one Gaussian mechanism
with the project's convention, noise std = multiplier x 1 on every entry. The shares a, b, c
put the norm where the noise hurts: a count of thousands needs almost none, the d(d+1)/2
second moments need most.

`pooled` reads one within-class covariance off all classes' second moments together (the same
release; ten classes average ten times the records, so a tenth of the noise) with per-class
means: the family for small epsilon, where per-class covariances drown.

Centred (`moments_centred`). The second moments' noise scales with the square of the clip
radius, and a latent's distance from its class mean is far smaller than its norm (MNIST spatial
latents: 1.8 against 3.9 at the median). So release A first gives each class a public centre and
spread: per record [a, b z / R, c ||z||^2 / R^2] (`CENTRE_SHARES`, norm <= 1), at
`CENTRE_NOISE_RATIO` times the noise (means and one scalar over thousands of records stand it).
Release B is the table above with u = z - centre in place of z, clipped to the class's radius
rho^2 = `clip_ratio` x its released spread (E ||z - mean||^2): rho replaces R in every scale, so
the covariance noise falls by (R / rho)^2. Both are Gaussian mechanisms with sensitivity 1; B's
centres and radii are post-processing of A.
"""

from __future__ import annotations

import functools
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
from tdpdm.stages.row_sums import row_sums, summed_where

MOMENTS_STAGE = "latent_moments"
VARIANCE_FLOOR = 1e-3
"""Smallest variance (eigenvalue) kept: noisy moments can imply negative ones."""
COUNT_SHARE = 0.1
"""Norm share of the count: noise 10 x sigma on a class of thousands is well under 1 %."""
MEAN_SHARE = 0.4
"""Norm share of the mean; the second moments get the rest (0.91)."""
CENTRES_STAGE = "latent_centres"
CENTRE_SHARES = (0.2, 0.8, math.sqrt(1.0 - 0.2**2 - 0.8**2))
"""Release A's norm shares: count, sum, summed squared norm."""
CENTRE_NOISE_RATIO = 3.0
"""Release A's noise multiplier over release B's: A costs a ninth of B."""
CLIP_RATIO = 2.5
"""Release B's radius^2 over the class's released spread E ||z - mean||^2: the spread of a
98-dimensional class concentrates (MNIST: its 99th percentile is 2.3 times its mean)."""


@dataclass(frozen=True)
class MomentScales:
    """How one record's moment vector spends its unit norm (see the module docstring)."""

    radius: float
    count: float = COUNT_SHARE
    mean: float = MEAN_SHARE

    def __post_init__(self) -> None:
        if not (self.radius > 0 and self.count > 0 and self.mean > 0):
            raise ValueError("moment scales must be positive")
        if self.count**2 + self.mean**2 >= 1:
            raise ValueError("count and mean shares leave no norm for the second moments")

    @property
    def second(self) -> float:
        return math.sqrt(1.0 - self.count**2 - self.mean**2)

    def second_bound(self, covariance: str) -> float:
        """Largest norm of m(z) for ||z|| <= radius inside the box [-1, 1]^d."""
        r2 = self.radius**2
        if covariance != "diagonal":
            return r2  # ||z z^T||_F = ||z||^2
        # max sum z_i^4 with |z_i| <= 1 and sum z_i^2 <= r2: floor(r2) coordinates at 1 and the
        # remainder on one more (a convex function peaks at a vertex); d ones at the corner.
        whole = math.floor(r2)
        return math.sqrt(whole + (r2 - whole) ** 2)

    @classmethod
    def for_latent(cls, latent_dim: int, radius_fraction: float = 1.0, **shares) -> MomentScales:
        return cls(radius=radius_fraction * math.sqrt(latent_dim), **shares)


@dataclass(frozen=True)
class MomentsPlan:
    """One Gaussian release of the per-class moment table; centred: release A (centres) first."""

    noise_multiplier: float
    centred: bool = False
    centre_ratio: float = CENTRE_NOISE_RATIO
    clip_ratio: float = CLIP_RATIO

    def moments_event(self) -> GaussianEvent:
        return GaussianEvent(self.noise_multiplier, count=1, stage=MOMENTS_STAGE)

    def centre_event(self) -> GaussianEvent:
        return GaussianEvent(self.centre_ratio * self.noise_multiplier, 1, CENTRES_STAGE)

    def events(self) -> list[Event]:
        if self.centred:
            return [self.centre_event(), self.moments_event()]
        return [self.moments_event()]


def _second_moments(z: np.ndarray, covariance: str) -> np.ndarray:
    if covariance == "diagonal":
        return z * z
    iu = np.triu_indices(z.shape[1])
    weight = np.where(iu[0] == iu[1], 1.0, math.sqrt(2.0))
    return (z[:, iu[0]] * z[:, iu[1]]) * weight


def clip_latents(z: np.ndarray, radius: float) -> np.ndarray:
    """Into the box [-1, 1]^d, then onto the L2 ball of `radius` (bounds the sensitivity)."""
    z = np.clip(np.asarray(z, dtype=np.float64), -1.0, 1.0)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z * np.minimum(1.0, radius / np.maximum(norms, 1e-12))


def moment_features(
    z: np.ndarray, covariance: str, scales: MomentScales | None = None
) -> np.ndarray:
    """(n, p) per-record vectors of norm <= 1 (see the module docstring)."""
    scales = scales or MomentScales.for_latent(np.shape(z)[1])
    z = clip_latents(z, scales.radius)
    second = _second_moments(z, covariance) / scales.second_bound(covariance)
    return np.concatenate(
        [
            np.full((len(z), 1), scales.count),
            z * (scales.mean / scales.radius),
            second * scales.second,
        ],
        axis=1,
    )


def release_moments(
    z: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    covariance: str,
    plan: MomentsPlan,
    session: PrivacySession,
    key: MechanismKey,
    scales: MomentScales | None = None,
) -> np.ndarray:
    """The noisy (classes, p) table of summed moment vectors; the event is recorded once."""
    labels = np.asarray(labels, dtype=np.int64)
    scales = scales or MomentScales.for_latent(np.shape(z)[1])
    features = functools.partial(moment_features, covariance=covariance, scales=scales)
    table = row_sums(labels, num_classes, features, np.asarray(z))
    noisy = table + key.numpy().normal(0.0, plan.noise_multiplier, size=table.shape)
    session.record(plan.moments_event())
    return noisy


def centre_features(z: np.ndarray, scales: MomentScales) -> np.ndarray:
    """(n, 1 + d + 1) release-A vectors [a, b z / R, c ||z||^2 / R^2] of norm <= 1."""
    z = clip_latents(z, scales.radius)
    a, b, c = CENTRE_SHARES
    r = scales.radius
    return np.concatenate(
        [np.full((len(z), 1), a), z * (b / r), (z * z).sum(1, keepdims=True) * (c / r**2)], axis=1
    )


def release_centres(
    z: np.ndarray, rows: np.ndarray, *, num_rows: int, plan: MomentsPlan, session, key,
    scales: MomentScales,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Release A: per row the noisy (counts, means, spreads E ||z - mean||^2)."""
    rows = np.asarray(rows, dtype=np.int64)
    a, b, c = CENTRE_SHARES
    r = scales.radius
    table = row_sums(rows, num_rows, functools.partial(centre_features, scales=scales), z)
    noisy = table + key.numpy().normal(0.0, plan.centre_ratio * plan.noise_multiplier, table.shape)
    session.record(plan.centre_event())
    counts = np.maximum(noisy[:, 0] / a, 1.0)
    means = np.clip(noisy[:, 1:-1] * (r / b) / counts[:, None], -1.0, 1.0)
    squares = noisy[:, -1] * (r**2 / c) / counts
    return counts, means, np.maximum(squares - (means * means).sum(1), VARIANCE_FLOOR)


def centred_features(
    z: np.ndarray, centres: np.ndarray, radii: np.ndarray, covariance: str, scales: MomentScales
) -> np.ndarray:
    """(n, p) vectors [count, mean share u / rho, second share m(u) / rho^2] of norm <= 1, u =
    z - its row's centre clipped to its row's radius rho (centres (n, d), radii (n,))."""
    u = clip_latents(z, scales.radius) - centres
    norms = np.linalg.norm(u, axis=1)
    u = u * np.minimum(1.0, radii / np.maximum(norms, 1e-12))[:, None]
    second = _second_moments(u, covariance) / (radii**2)[:, None]  # ||m(u)|| <= ||u||^2
    return np.concatenate(
        [np.full((len(z), 1), scales.count), u * (scales.mean / radii[:, None]),
         second * scales.second], axis=1,
    )  # fmt: skip


def release_centred(
    z: np.ndarray, rows: np.ndarray, *, centres: np.ndarray, radii: np.ndarray, covariance: str,
    plan: MomentsPlan, session, key, scales: MomentScales,
) -> np.ndarray:  # fmt: skip
    """Release B: the noisy (rows, p) table of `centred_features` about public centres."""
    rows = np.asarray(rows, dtype=np.int64)
    z = np.asarray(z, dtype=np.float64)
    features = functools.partial(centred_features, covariance=covariance, scales=scales)
    table = row_sums(rows, len(centres), features, z, centres[rows], radii[rows])
    noisy = table + key.numpy().normal(0.0, plan.noise_multiplier, size=table.shape)
    session.record(plan.moments_event())
    return noisy


def gaussians_about_centres(
    noisy: np.ndarray, centres: np.ndarray, radii: np.ndarray, covariance: str,
    scales: MomentScales, floor: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Post-processing of release B: (means, covariances, noisy counts, unfloored) per row."""
    d = centres.shape[1]
    raw_counts = noisy[:, 0] / scales.count
    counts = np.maximum(raw_counts, 1.0)
    shift = noisy[:, 1 : 1 + d] * (radii / scales.mean / counts)[:, None]
    second = noisy[:, 1 + d :] * (radii**2 / scales.second / counts)[:, None]
    means = np.clip(centres + shift, -1.0, 1.0)
    if covariance == "diagonal":
        var = np.maximum(second - shift**2, VARIANCE_FLOOR)
        return means, np.stack([np.diag(v) for v in var]), raw_counts
    covs = _symmetric(second, d) - np.einsum("ci,cj->cij", shift, shift)
    if covariance == "pooled":
        within = _psd(np.einsum("c,cij->ij", counts, covs) / counts.sum())
        return means, np.broadcast_to(within, covs.shape).copy(), raw_counts
    return means, np.stack([_psd(c) for c in covs]) if floor else covs, raw_counts


def class_gaussians(
    z: np.ndarray, labels: np.ndarray, *, num_classes: int, covariance: str, plan: MomentsPlan,
    session, key, scales: MomentScales,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(means, floored covariances) per class from the plan's release(s)."""
    d = np.shape(z)[1]
    if not plan.centred:
        noisy = release_moments(
            z, labels, num_classes=num_classes, covariance=covariance, plan=plan,
            session=session, key=key, scales=scales,
        )  # fmt: skip
        return gaussians_from_moments(noisy, d, covariance, scales)
    _, centres, spreads = release_centres(
        z, labels, num_rows=num_classes, plan=plan, session=session, key=key.child("centres"),
        scales=scales,
    )  # fmt: skip
    radii = clip_radii(spreads, plan.clip_ratio, scales)
    noisy = release_centred(
        z, labels, centres=centres, radii=radii, covariance=covariance, plan=plan,
        session=session, key=key.child("moments"), scales=scales,
    )  # fmt: skip
    means, covs, _ = gaussians_about_centres(noisy, centres, radii, covariance, scales)
    return means, covs


def clip_radii(spreads: np.ndarray, clip_ratio: float, scales: MomentScales) -> np.ndarray:
    """Release B's radii from public spreads, never above the ball's diameter."""
    return np.clip(np.sqrt(clip_ratio * np.asarray(spreads)), 1e-3, 2.0 * scales.radius)


def _symmetric(upper: np.ndarray, d: int) -> np.ndarray:
    """(rows, d, d) from rows of `_second_moments`' upper triangles (sqrt(2) off-diagonal)."""
    iu = np.triu_indices(d)
    weight = np.where(iu[0] == iu[1], 1.0, math.sqrt(2.0))
    raw = np.zeros((len(upper), d, d))
    raw[:, iu[0], iu[1]] = upper / weight
    return np.triu(raw) + np.transpose(np.triu(raw, 1), (0, 2, 1))


def _psd(cov: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    return (vecs * np.maximum(vals, VARIANCE_FLOOR)) @ vecs.T


def gaussians_from_moments(
    noisy: np.ndarray,
    latent_dim: int,
    covariance: str,
    scales: MomentScales | None = None,
    floor: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Post-processing: (means (C, d), covariances (C, d, d)) from the noisy table; `floor`
    False leaves full covariances unfloored (symmetric, possibly indefinite) for denoising."""
    d = latent_dim
    scales = scales or MomentScales.for_latent(d)
    counts = np.maximum(noisy[:, 0] / scales.count, 1.0)
    sums = noisy[:, 1 : 1 + d] * (scales.radius / scales.mean)
    means = np.clip(sums / counts[:, None], -1.0, 1.0)
    second = noisy[:, 1 + d :] * (scales.second_bound(covariance) / scales.second)
    if covariance == "diagonal":
        var = second / counts[:, None] - means**2
        return means, np.stack([np.diag(np.maximum(v, VARIANCE_FLOOR)) for v in var])
    raw = _symmetric(second, d)  # summed z z^T per class
    if covariance == "pooled":
        scatter = raw.sum(0) - np.einsum("c,ci,cj->ij", counts, means, means)
        within = _psd(scatter / counts.sum())
        return means, np.broadcast_to(within, (len(noisy), d, d)).copy()
    covs = raw / counts[:, None, None] - np.einsum("ci,cj->cij", means, means)
    return means, np.stack([_psd(c) for c in covs]) if floor else covs


class DPMoments:
    """The `dp-moments` stage-2 model (private mode): see the module docstring."""

    name = "dp-moments"
    needs_release = False

    def plan(
        self, cfg: RunConfig, n_records: int, adjacency: Adjacency, delta: float, spent: list[Event]
    ) -> MomentsPlan:
        s2 = cfg.stage2
        centred = {"centred": s2.moments_centred, "clip_ratio": s2.moments_clip_ratio}
        sigma = calibrate_noise(
            lambda s: MomentsPlan(s, **centred).events(), cfg.epsilon, delta, adjacency,
            fixed_events=spent,
        )  # fmt: skip
        return MomentsPlan(sigma, **centred)

    def fit(self, ctx: RunContext, data, plan, session) -> LatentMixture:
        if not isinstance(plan, MomentsPlan) or session is None:
            raise ValueError("dp-moments reads private latents: it needs its plan and a session")
        covariance = ctx.cfg.stage2.moments_covariance
        classes, d = ctx.spec.num_classes, data.latents.shape[1]
        scales = MomentScales.for_latent(d, ctx.cfg.stage2.moments_radius)
        ctx.log(
            f"stage 2: class Gaussians from DP moments ({covariance} covariance, radius "
            f"{scales.radius:.2f}, {'centred, two' if plan.centred else 'one'} Gaussian "
            f"release(s), sigma {plan.noise_multiplier:.3f})"
        )
        with ctx.timed("dp_moments", dp_sgd=False, covariance=covariance, sums=summed_where()):
            means, covs = class_gaussians(
                data.latents, data.labels, num_classes=classes, covariance=covariance,
                plan=plan, session=session, key=MechanismKey.fresh("stage2-moments"),
                scales=scales,
            )  # fmt: skip
        model = LatentMixture(classes, d, classes)
        model.log_weights.fill_(-math.log(classes))
        model.means.copy_(torch.from_numpy(means).float())
        model.scale_tril.copy_(torch.from_numpy(np.linalg.cholesky(covs)).float())
        model.class_shares.copy_(torch.eye(classes))
        return model
