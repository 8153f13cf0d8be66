"""The DPDM evaluation CNN, so downstream accuracy is comparable with the published tables.

Architecture as in DPDM (Dockhorn et al., TMLR 2023): three 3x3 conv layers (32, 64, 128
channels), each followed by ReLU and 2x2 max-pooling, then dropout 0.5 and a 1152-128-10 MLP.
Padding 1 keeps 28 -> 14 -> 7 -> 3, hence the flattened size 128 * 3 * 3 = 1152. Other image
sizes and RGB (your own data, issue 15) keep the layers: the flattened size is
128 * (size // 8)^2 and the first convolution takes `in_channels`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FLAT_FEATURES = 128 * 3 * 3
FEATURE_DIM = 128
IMAGE_SIZE = 28


class DPDMClassifier(nn.Module):
    """CNN on (N, C, S, S) float images in [0, 1] (DPDM's: C 1, S 28); returns class logits."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float = 0.5,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(
                f"image_size must be at least 8 (three 2x2 poolings), not {image_size}"
            )
        self.num_classes = num_classes
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(128 * (image_size // 8) ** 2, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, num_classes)

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened conv output (N, 1152 at 28x28).

        Inputs are mapped to [-1, 1] without data-set statistics, so one definition serves
        MNIST and Fashion-MNIST alike.
        """
        return self.conv(x * 2.0 - 1.0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """128-d penultimate activations: the feature space of the classifier Frechet distance."""
        return torch.relu(self.fc1(self.dropout(self.flat(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def to_model_input(images: np.ndarray | torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) images -> float (N, C, H, W) in [0, 1] on `device`.

    Conversion happens on the device so a whole uint8 data set can live there (4x smaller).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images))  # copy: the source may be a read-only mmap
    t = images.to(device)
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {t.dtype}")
    t = t.float() / 255.0
    return t.unsqueeze(1) if t.ndim == 3 else t
