"""Unsharp masking of decoded samples.

A decoder trained with a pixel-wise loss answers an uncertain latent with the mean of the images
it could stand for, so its samples are blurred copies of the data; a classifier trained on them
then meets sharper edges at test time. Adding back a multiple of each image's high frequencies
(the image minus its Gaussian blur) undoes part of that. The filter is fixed and reads nothing
but the sample it sharpens: post-processing of DP outputs, no privacy cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLUR_SIGMA = 1.0
"""Pixels; the blur the mask subtracts (a 5x5 kernel, 2 sigma either side)."""


def _gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    return weights[:, None] * weights[None, :]


def unsharp_mask(images: torch.Tensor, amount: float, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """``images + amount * (images - blur(images))``, clamped to [0, 1].

    ``images``: float (N, C, H, W) in [0, 1]; each channel is filtered on its own, borders
    replicated (so a flat image stays flat). ``amount`` 0 returns the input unchanged.
    """
    if amount < 0:
        raise ValueError(f"the sharpening amount must be >= 0, got {amount}")
    if amount == 0:
        return images
    channels = images.shape[1]
    radius = max(1, round(2 * sigma))
    kernel = _gaussian_kernel(sigma, radius).to(images)[None, None].repeat(channels, 1, 1, 1)
    padded = F.pad(images, (radius,) * 4, mode="replicate")
    blurred = F.conv2d(padded, kernel, groups=channels)
    return (images + amount * (images - blurred)).clamp(0, 1)
