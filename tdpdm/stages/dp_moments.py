"""Stage 2 from DP sufficient statistics: per class, the count, sum and second moment of the
private latents, released once with the Gaussian mechanism; one Gaussian per class is read off
them (post-processing) and sampled like the deconvolved mixture.

Seconds of compute, and its cost barely depends on epsilon because each class averages
thousands of records (DESIGN 8 measured 92 % on MNIST at epsilon 10 with full covariances).

Sensitivity. The autoencoder's tanh latent z lies in [-1, 1]^d (clamped here, so the bound never
rests on the encoder). Each record contributes one vector to its class's row,
    v = [1, z / sqrt(d), m(z) / sqrt(d)] / sqrt(3),
with m(z) = z*z (diagonal model; ||z*z|| <= sqrt(d)) or the upper triangle of z z^T with
off-diagonal entries scaled by sqrt(2) and divided by sqrt(d) once more (full model; its norm is
||z||^2 / d <= 1 after both divisions). So ||v|| <= 1: adding or removing a record moves the
(classes x p) table by at most 1 (replace-one: 2), and the release is one Gaussian mechanism
with the project's convention, noise std = multiplier x 1 on every entry.
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


@dataclass(frozen=True)
class MomentsPlan:
    """One Gaussian release of the per-class moment table."""

    noise_multiplier: float

    def events(self) -> list[Event]:
        return [GaussianEvent(self.noise_multiplier, count=1, stage=MOMENTS_STAGE)]


def moment_features(z: np.ndarray, covariance: str) -> np.ndarray:
    """(n, p) per-record vectors of norm <= 1 (see the module docstring)."""
    z = np.clip(np.asarray(z, dtype=np.float64), -1.0, 1.0)
    n, d = z.shape
    if covariance == "diagonal":
        second = z * z / math.sqrt(d)
    else:
        iu = np.triu_indices(d)
        weight = np.where(iu[0] == iu[1], 1.0, math.sqrt(2.0))
        second = (z[:, iu[0]] * z[:, iu[1]]) * weight / d
    return np.concatenate([np.ones((n, 1)), z / math.sqrt(d), second], axis=1) / math.sqrt(3.0)


def release_moments(
    z: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    covariance: str,
    plan: MomentsPlan,
    session: PrivacySession,
    key: MechanismKey,
) -> np.ndarray:
    """The noisy (classes, p) table of summed moment vectors; the event is recorded once."""
    labels = np.asarray(labels, dtype=np.int64)
    table = np.zeros((num_classes, moment_features(z[:1], covariance).shape[1]))
    # In chunks: the full model's features are d(d+1)/2 wide (4,851 for d = 98), and all 60k
    # records at once took over 10 GB of temporaries (a MemoryError on the 23 GB CI machine).
    for i in range(0, len(z), MOMENTS_CHUNK):
        onehot = np.eye(num_classes)[labels[i : i + MOMENTS_CHUNK]]  # (chunk, classes)
        table += onehot.T @ moment_features(z[i : i + MOMENTS_CHUNK], covariance)
    noisy = table + key.numpy().normal(0.0, plan.noise_multiplier, size=table.shape)
    session.record(plan.events()[0])
    return noisy


def gaussians_from_moments(
    noisy: np.ndarray, latent_dim: int, covariance: str
) -> tuple[np.ndarray, np.ndarray]:
    """Post-processing: (means (C, d), covariances (C, d, d)) from the noisy table."""
    d = latent_dim
    table = noisy * math.sqrt(3.0)
    counts = np.maximum(table[:, 0], 1.0)
    means = np.clip(table[:, 1 : 1 + d] * math.sqrt(d) / counts[:, None], -1.0, 1.0)
    second = table[:, 1 + d :]
    covs = np.empty((len(table), d, d))
    for c in range(len(table)):
        if covariance == "diagonal":
            var = second[c] * math.sqrt(d) / counts[c] - means[c] ** 2
            covs[c] = np.diag(np.maximum(var, VARIANCE_FLOOR))
        else:
            iu = np.triu_indices(d)
            weight = np.where(iu[0] == iu[1], 1.0, math.sqrt(2.0))
            m = np.zeros((d, d))
            m[iu] = second[c] * d / weight / counts[c]
            m = np.triu(m) + np.triu(m, 1).T
            cov = m - np.outer(means[c], means[c])
            vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
            covs[c] = (vecs * np.maximum(vals, VARIANCE_FLOOR)) @ vecs.T
    return means, covs


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
        ctx.log(
            f"stage 2: class Gaussians from DP moments ({covariance} covariance, one Gaussian "
            f"release, sigma {plan.noise_multiplier:.3f})"
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
            )
            means, covs = gaussians_from_moments(noisy, d, covariance)
        model = LatentMixture(classes, d, classes)
        model.log_weights.fill_(-math.log(classes))
        model.means.copy_(torch.from_numpy(means).float())
        model.scale_tril.copy_(torch.from_numpy(np.linalg.cholesky(covs)).float())
        model.class_shares.copy_(torch.eye(classes))
        return model
