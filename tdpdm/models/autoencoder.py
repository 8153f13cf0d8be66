"""The stage-1 convolutional autoencoders.

GroupNorm, not BatchNorm: DP-SGD needs per-sample gradients and BatchNorm mixes samples.
The latent handed to stage 2 is always a flat vector squashed by tanh into [-1, 1]^d, so its
scale is fixed by construction: stage 2 needs no data-dependent normalisation (which would be an
unaccounted read of private statistics), and a per-record release can clip to a known norm.

Two shapes of latent (`stage1.latent`):
- `vector` (`ConvAutoencoder`): a dense layer maps the 7x7 feature map to `latent_dim` numbers.
- `spatial` (`SpatialAutoencoder`): a 1x1 convolution maps it to `latent_channels` x 7 x 7
  (for 28x28 images), flattened: d = latent_channels * (image_size / 4)^2. DESIGN section 8: a
  2x7x7 spatial latent trained on all 60k MNIST records gives reconstructions on which the CNN
  scores 98.3-98.7 %, against the vector latent's visible loss.

Both take `channels` (1 grey, 3 RGB) and `image_size` (a multiple of 4; two stride-2 stages).

`label_classes` > 0 (`stage1.conditional_decoder`) makes the decoder read the one-hot label
beside the latent (a vector: appended; spatial: constant maps), so the class is drawn by the
decoder's DP weights and the latent only needs the style. A per-record release, whose latents
are drowned in noise, then still yields images of the sampled class (issue 14).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, groups: int, **conv: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, **conv), nn.GroupNorm(groups, cout), nn.SiLU())


def _check_size(image_size: int) -> int:
    if image_size < 4 or image_size % 4:
        raise ValueError(f"image_size must be a positive multiple of 4, not {image_size}")
    return image_size // 4


def _downsample(channels: int, width: int, groups: int) -> list[nn.Module]:
    # Strided convolutions straight from the input: DP-SGD's per-sample gradients of a
    # convolution cost in proportion to its output size, so no conv runs at full resolution in
    # the encoder (about 3x faster under Opacus on CPU than a full-resolution stem).
    return [
        _block(channels, width, groups, kernel_size=4, stride=2, padding=1),  # size/2
        _block(width, 2 * width, groups, kernel_size=4, stride=2, padding=1),  # size/4
    ]


def _upsample(width: int, groups: int, channels: int) -> list[nn.Module]:
    return [
        nn.Upsample(scale_factor=2, mode="nearest"),
        _block(2 * width, width, groups, kernel_size=3, padding=1),  # size/2
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(width, channels, kernel_size=3, padding=1),  # full-size logits
    ]


def one_hot_labels(labels: torch.Tensor | None, classes: int, like: torch.Tensor) -> torch.Tensor:
    """(N, classes) one-hot rows in `like`'s dtype, for a label-conditioned decoder."""
    if labels is None:
        raise ValueError("a label-conditioned decoder (stage1.conditional_decoder) needs labels")
    return F.one_hot(labels.long(), classes).to(like.dtype)


class LatentAutoencoder(nn.Module):
    """Images in [0, 1] (N, channels, size, size) <-> latent vectors in [-1, 1]^latent_dim."""

    latent_dim: int
    label_classes: int = 0
    """> 0: the decoder also reads the one-hot label (`decode(z, labels)`)."""
    latent_noise_std: float = 0.0
    """> 0: while training, the decoder reads the latent plus Gaussian noise of this std, so it
    learns to draw what the noise hides from the label (`stage1.decoder_latent_noise`). Not a
    weight: an untrained model to load a checkpoint into needs none (decoding is eval mode)."""
    encoder: nn.Module
    decoder: nn.Module

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def training_latent(self, z: torch.Tensor) -> torch.Tensor:
        """What the decoder reads of `z` in this mode: `z`, plus the training noise when
        training (torch's global generator: DP-SGD's secret loss stream)."""
        if self.training and self.latent_noise_std > 0:
            return z + self.latent_noise_std * torch.randn_like(z)
        return z

    def decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if not self.label_classes:
            return z
        return torch.cat([z, one_hot_labels(labels, self.label_classes, z)], dim=1)

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.decoder_input(z, labels))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(z, labels))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction logits (train with BCE-with-logits against x)."""
        return self.decode_logits(self.training_latent(self.encode(x)), labels)


class ConvAutoencoder(LatentAutoencoder):
    """The `vector` latent: a dense bottleneck of `latent_dim` numbers."""

    def __init__(
        self,
        latent_dim: int = 32,
        width: int = 32,
        groups: int = 4,
        *,
        channels: int = 1,
        image_size: int = 28,
        label_classes: int = 0,
    ) -> None:
        super().__init__()
        self.latent_dim, self.width, self.label_classes = latent_dim, width, label_classes
        self.channels, self.image_size = channels, image_size
        s, w2 = _check_size(image_size), 2 * width
        self.encoder = nn.Sequential(
            *_downsample(channels, width, groups),
            nn.Flatten(),
            nn.Linear(w2 * s * s, latent_dim),
            nn.Tanh(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + label_classes, w2 * s * s),
            nn.SiLU(),
            nn.Unflatten(1, (w2, s, s)),
            *_upsample(width, groups, channels),
        )


class SpatialAutoencoder(LatentAutoencoder):
    """The `spatial` latent: `latent_channels` feature maps at a quarter of the image size."""

    def __init__(
        self,
        latent_channels: int = 2,
        width: int = 32,
        groups: int = 4,
        *,
        channels: int = 1,
        image_size: int = 28,
        label_classes: int = 0,
    ) -> None:
        super().__init__()
        s, w2 = _check_size(image_size), 2 * width
        self.latent_channels, self.width, self.label_classes = latent_channels, width, label_classes
        self.side = s
        self.channels, self.image_size = channels, image_size
        self.latent_dim = latent_channels * s * s
        self.encoder = nn.Sequential(
            *_downsample(channels, width, groups),
            nn.Conv2d(w2, latent_channels, kernel_size=1),
            nn.Tanh(),
            nn.Flatten(),
        )
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (latent_channels + label_classes, s, s)),
            _block(latent_channels + label_classes, w2, groups, kernel_size=3, padding=1),
            *_upsample(width, groups, channels),
        )

    def decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The flat latent, followed (label-conditioned) by one constant map per class."""
        if not self.label_classes:
            return z
        hot = one_hot_labels(labels, self.label_classes, z)
        maps = hot[:, :, None].expand(-1, -1, self.side * self.side).reshape(len(z), -1)
        return torch.cat([z, maps], dim=1)


class LabelledAutoencoder(nn.Module):
    """An autoencoder with a linear label head on its latent, for stage-1 training only
    (`stage1.label_objective_weight`): the label loss pulls the classes apart in the latent, so a
    per-record release of it keeps more class signal per unit of noise. The head is dropped
    after training (`autoencoder`); it never reaches a release or a checkpoint."""

    def __init__(self, autoencoder: LatentAutoencoder, num_classes: int) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.label_head = nn.Linear(autoencoder.latent_dim, num_classes)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction logits, label logits); `labels` feed a label-conditioned decoder."""
        z = self.autoencoder.encode(x)
        recon = self.autoencoder.decode_logits(self.autoencoder.training_latent(z), labels)
        return recon, self.label_head(z)
