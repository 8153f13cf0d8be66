"""`released` mode: one Gaussian release of each record's [latent, label] vector.

Each record's vector is v = C * [sqrt(1 - l^2) * z / sqrt(d), l * onehot(y)] with l the
`label_scale` in (0, 1): the tanh latent z lies in [-1, 1]^d, so |v| <= C by construction and
the public scales can be undone exactly (v is still clipped to C, so the guarantee never rests
on the encoder's output range). v is released once with N(0, (sigma C)^2) noise per coordinate.
The label rides inside the same mechanism (a clean label next to a noisy latent would break the
guarantee); stage 2 reads it back from the noisy one-hot part, which is post-processing. The
release is DP only under replace-one adjacency (sensitivity 2C, record count public).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tdpdm.config import ReleaseConfig
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession


@dataclass(frozen=True)
class ReleasedLatents:
    latents: np.ndarray
    """(N, d) noisy latent estimates on the encoder's scale (z + noise)."""
    label_vectors: np.ndarray
    """(N, classes) noisy one-hot labels on the one-hot scale (onehot(y) + noise)."""
    labels: np.ndarray
    """(N,) arg-max of `label_vectors` (a poor per-record label: stage 2 should not trust it)."""
    noise_std: float
    """Per-coordinate noise std on `latents` (public: needed by noise-aware stage 2)."""
    label_noise_std: float
    """Per-coordinate noise std on `label_vectors`."""

    def metadata(self) -> dict[str, float]:
        return {
            "noise_std_per_coordinate": self.noise_std,
            "label_noise_std_per_coordinate": self.label_noise_std,
        }


def release_scales(latent_dim: int, cfg: ReleaseConfig) -> tuple[float, float]:
    """(latent scale, label scale): the factors mapping z and onehot(y) into the vector v."""
    if not 0.0 < cfg.label_scale < 1.0:
        raise ValueError(f"release.label_scale must be in (0, 1), got {cfg.label_scale}")
    latent = cfg.clip_norm * math.sqrt(1.0 - cfg.label_scale**2) / math.sqrt(latent_dim)
    return latent, cfg.clip_norm * cfg.label_scale


def release_vectors(
    latents: np.ndarray, labels: np.ndarray, *, num_classes: int, cfg: ReleaseConfig
) -> np.ndarray:
    """The (N, d + classes) float64 vectors v the release adds its noise to: [latent_scale * z,
    label_scale * onehot(y)], clipped to `cfg.clip_norm`. Pure (no noise, no privacy event):
    `release_latents` uses it, and custodian-only measurements put clean records on the
    release's scale with it (benchmarks/loss_budget_released.py)."""
    n, d = latents.shape
    latent_scale, label_scale = release_scales(d, cfg)
    onehot = np.zeros((n, num_classes), dtype=np.float64)
    onehot[np.arange(n), labels] = label_scale
    vectors = np.concatenate([latents.astype(np.float64) * latent_scale, onehot], axis=1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors *= np.minimum(1.0, cfg.clip_norm / np.maximum(norms, 1e-12))
    return vectors


def published_parts(
    vectors: np.ndarray, latent_dim: int, cfg: ReleaseConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(latents, label vectors) of release-space vectors (noisy or not), float64: the public
    scales undone, z + noise / latent_scale and onehot(y) + noise / label_scale. On noiseless
    `release_vectors` it gives what the release would publish without noise."""
    latent_scale, label_scale = release_scales(latent_dim, cfg)
    return vectors[:, :latent_dim] / latent_scale, vectors[:, latent_dim:] / label_scale


def release_noise(key: MechanismKey, shape: tuple[int, ...], std: float) -> np.ndarray:
    """The release's Gaussian noise, drawn from the secret mechanism key."""
    return key.numpy().normal(0.0, std, size=shape)


def release_latents(
    latents: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    cfg: ReleaseConfig,
    event: GaussianEvent,
    session: PrivacySession,
    key: MechanismKey,
) -> ReleasedLatents:
    """One Gaussian release of every record's vector; the noise comes from the secret `key`
    (fresh OS entropy, never the public seed: whoever could regenerate it could subtract it)."""
    d = latents.shape[1]
    latent_scale, label_scale = release_scales(d, cfg)
    vectors = release_vectors(latents, labels, num_classes=num_classes, cfg=cfg)
    std = event.noise_multiplier * cfg.clip_norm
    released = vectors + release_noise(key, vectors.shape, std)
    session.record(event)
    latent_part, label_part = published_parts(released, d, cfg)
    return ReleasedLatents(
        latents=latent_part.astype(np.float32),
        label_vectors=label_part.astype(np.float32),
        labels=label_part.argmax(axis=1).astype(np.int64),
        noise_std=std / latent_scale,
        label_noise_std=std / label_scale,
    )
