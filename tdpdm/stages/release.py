"""`released` mode: one Gaussian release of each record's [latent, label] vector.

Each record's vector v = [z / sqrt(d), label_scale * onehot(y)] is clipped to norm C and
released once with N(0, (sigma C)^2) noise per coordinate. The label rides inside the same
mechanism (a clean label next to a noisy latent would break the guarantee) and is read back as
the arg-max of the noisy one-hot part, which is post-processing. The release is DP only under
replace-one adjacency (sensitivity 2C, the record count public); the accountant handles that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tdpdm.config import ReleaseConfig
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.session import PrivacySession


@dataclass(frozen=True)
class ReleasedLatents:
    latents: np.ndarray
    """(N, d) noisy latent estimates on the encoder's scale."""
    labels: np.ndarray
    """(N,) labels decoded from the noisy one-hot part."""
    vectors: np.ndarray
    """(N, d + classes) the released vectors themselves."""
    noise_std: float
    """Per-coordinate noise std on `latents` (known, public: needed by noise-aware stage 2)."""


def release_latents(
    latents: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    cfg: ReleaseConfig,
    event: GaussianEvent,
    session: PrivacySession,
    seed: int,
) -> ReleasedLatents:
    n, d = latents.shape
    onehot = np.zeros((n, num_classes), dtype=np.float64)
    onehot[np.arange(n), labels] = cfg.label_scale
    vectors = np.concatenate([latents.astype(np.float64) / math.sqrt(d), onehot], axis=1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors *= np.minimum(1.0, cfg.clip_norm / np.maximum(norms, 1e-12))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E1EA5E]))
    std = event.noise_multiplier * cfg.clip_norm
    released = vectors + rng.normal(0.0, std, size=vectors.shape)
    session.record(event)
    return ReleasedLatents(
        latents=(released[:, :d] * math.sqrt(d)).astype(np.float32),
        labels=released[:, d:].argmax(axis=1).astype(np.int64),
        vectors=released.astype(np.float32),
        noise_std=std * math.sqrt(d),
    )
