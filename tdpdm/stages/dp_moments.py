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

MOMENTS_STAGE = "latent_moments"
MOMENTS_CHUNK = 2048
"""Records per chunk when summing the moment table (bounds the memory, not the result)."""
VARIANCE_FLOOR = 1e-3
"""Smallest variance (eigenvalue) kept: noisy moments can imply negative ones."""
COUNT_SHARE = 0.1
"""Norm share of the count: noise 10 x sigma on a class of thousands is well under 1 %."""
MEAN_SHARE = 0.4
"""Norm share of the mean; the second moments get the rest (0.91)."""


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
    """One Gaussian release of the per-class moment table."""

    noise_multiplier: float

    def events(self) -> list[Event]:
        return [GaussianEvent(self.noise_multiplier, count=1, stage=MOMENTS_STAGE)]


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
    table = np.zeros((num_classes, moment_features(z[:1], covariance, scales).shape[1]))
    # In chunks: the full model's features are d(d+1)/2 wide (4,851 for d = 98), and all 60k
    # records at once took over 10 GB of temporaries (a MemoryError on the 23 GB CI machine).
    for i in range(0, len(z), MOMENTS_CHUNK):
        onehot = np.eye(num_classes)[labels[i : i + MOMENTS_CHUNK]]  # (chunk, classes)
        table += onehot.T @ moment_features(z[i : i + MOMENTS_CHUNK], covariance, scales)
    noisy = table + key.numpy().normal(0.0, plan.noise_multiplier, size=table.shape)
    session.record(plan.events()[0])
    return noisy


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
    iu = np.triu_indices(d)
    weight = np.where(iu[0] == iu[1], 1.0, math.sqrt(2.0))
    raw = np.zeros((len(noisy), d, d))  # summed z z^T per class
    raw[:, iu[0], iu[1]] = second / weight
    raw = np.triu(raw) + np.transpose(np.triu(raw, 1), (0, 2, 1))
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
        sigma = calibrate_noise(
            lambda s: MomentsPlan(s).events(), cfg.epsilon, delta, adjacency, fixed_events=spent
        )
        return MomentsPlan(sigma)

    def fit(self, ctx: RunContext, data, plan, session) -> LatentMixture:
        if not isinstance(plan, MomentsPlan) or session is None:
            raise ValueError("dp-moments reads private latents: it needs its plan and a session")
        covariance = ctx.cfg.stage2.moments_covariance
        classes, d = ctx.spec.num_classes, data.latents.shape[1]
        scales = MomentScales.for_latent(d, ctx.cfg.stage2.moments_radius)
        ctx.log(
            f"stage 2: class Gaussians from DP moments ({covariance} covariance, radius "
            f"{scales.radius:.2f}, one Gaussian release, sigma {plan.noise_multiplier:.3f})"
        )
        with ctx.timed("dp_moments", dp_sgd=False, covariance=covariance):
            noisy = release_moments(
                data.latents,
                data.labels,
                num_classes=classes,
                covariance=covariance,
                plan=plan,
                session=session,
                key=MechanismKey.fresh("stage2-moments"),
                scales=scales,
            )
            means, covs = gaussians_from_moments(noisy, d, covariance, scales)
        model = LatentMixture(classes, d, classes)
        model.log_weights.fill_(-math.log(classes))
        model.means.copy_(torch.from_numpy(means).float())
        model.scale_tril.copy_(torch.from_numpy(np.linalg.cholesky(covs)).float())
        model.class_shares.copy_(torch.eye(classes))
        return model
