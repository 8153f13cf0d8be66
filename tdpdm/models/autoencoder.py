"""The stage-1 convolutional autoencoder.

GroupNorm, not BatchNorm: DP-SGD needs per-sample gradients and BatchNorm mixes samples.
The latent is a flat vector squashed by tanh into [-1, 1]^d, so its scale is fixed by
construction: stage 2 needs no data-dependent normalisation (which would be an unaccounted
read of private statistics), and a per-record release can clip to a known norm.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int, groups: int, **conv: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, **conv), nn.GroupNorm(groups, cout), nn.SiLU())


class ConvAutoencoder(nn.Module):
    """28x28 grey images in [0, 1] <-> latent vectors in [-1, 1]^latent_dim."""

    def __init__(self, latent_dim: int = 32, width: int = 32, groups: int = 4) -> None:
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        w2 = 2 * width
        # Strided convolutions straight from the input: DP-SGD's per-sample gradients of a
        # convolution cost in proportion to its output size, so no conv runs at 28x28 in the
        # encoder (about 3x faster under Opacus on CPU than a full-resolution stem).
        self.encoder = nn.Sequential(
            _block(1, width, groups, kernel_size=4, stride=2, padding=1),  # 14x14
            _block(width, w2, groups, kernel_size=4, stride=2, padding=1),  # 7x7
            nn.Flatten(),
            nn.Linear(w2 * 49, latent_dim),
            nn.Tanh(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, w2 * 49),
            nn.SiLU(),
            nn.Unflatten(1, (w2, 7, 7)),
            nn.Upsample(scale_factor=2, mode="nearest"),
            _block(w2, width, groups, kernel_size=3, padding=1),  # 14x14
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, 1, kernel_size=3, padding=1),  # 28x28 logits
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits (train with BCE-with-logits against x)."""
        return self.decode_logits(self.encode(x))
