"""The DPDM evaluation CNN, so downstream accuracy is comparable with the published tables.

Architecture as in DPDM (Dockhorn et al., TMLR 2023): three 3x3 conv layers (32, 64, 128
channels), each followed by ReLU and 2x2 max-pooling, then dropout 0.5 and a 1152-128-10 MLP.
Padding 1 keeps 28 -> 14 -> 7 -> 3, hence the flattened size 128 * 3 * 3 = 1152.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FLAT_FEATURES = 128 * 3 * 3
FEATURE_DIM = 128
IMAGE_SIZE = 28


class DPDMClassifier(nn.Module):
    """CNN on (N, 1, 28, 28) float images in [0, 1]; returns class logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5) -> None:
        super().__init__()
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
        self.fc1 = nn.Linear(FLAT_FEATURES, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, num_classes)

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened conv output (N, 1152).

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
    """uint8 (N, H, W) images -> float (N, 1, H, W) in [0, 1] on `device`.

    Conversion happens on the device so a whole uint8 data set can live there (4x smaller).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images))  # copy: the source may be a read-only mmap
    t = images.to(device)
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {t.dtype}")
    return (t.float() / 255.0).unsqueeze(1)
