"""Helpers for the Ray Train stage-1 tests: tiny models, real MNIST records, a slow loss.

Ray workers cannot import this folder, so tests register this module with cloudpickle to be
shipped by value (`ship_to_ray_workers`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from tdpdm.models.autoencoder import ConvAutoencoder
from tdpdm.stages.encode import reconstruction_loss


def mnist_images(n: int) -> torch.Tensor:
    """The first `n` real MNIST training images in [0, 1], shape (n, 1, 28, 28)."""
    from tdpdm_test_support import shared_datasets_root  # the driver only: never shipped

    from tdpdm.data.loader import load_split
    from tdpdm.stages.encode import images_to_tensor

    images, _ = load_split("mnist", str(shared_datasets_root()), "train")
    return images_to_tensor(np.asarray(images[:n]))


def tiny_autoencoder(seed: int = 0) -> ConvAutoencoder:
    torch.manual_seed(seed)
    return ConvAutoencoder(latent_dim=8, width=8)


def mean_reconstruction_loss(model: torch.nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float(reconstruction_loss(model.eval(), [images]).mean())


def logged_slow_loss(model, batch, *, log_dir: str, delay_s: float, input_noise: float = 0.0):
    """`reconstruction_loss`, slowed down, counting its calls per process in
    `log_dir/rank<r>-<pid>.calls`: the test finds the worker pids there and sees where a
    restarted worker began. `input_noise` > 0 perturbs the inputs with torch's global generator
    (as diffusion timesteps or VAE sampling do): DP-SGD runs it on the secret loss stream."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    path = Path(log_dir) / f"rank{rank}-{os.getpid()}.calls"
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    time.sleep(delay_s)
    if input_noise:
        x = batch[0]
        batch = [(x + input_noise * torch.randn_like(x)).clamp(0.0, 1.0), *batch[1:]]
    return reconstruction_loss(model, batch)


def ship_to_ray_workers() -> None:
    import ray.cloudpickle
    import train_support

    ray.cloudpickle.register_pickle_by_value(train_support)


class Collect:
    """A step recorder standing in for the driver's ledger session."""

    def __init__(self) -> None:
        self.events: list = []

    def record(self, event) -> None:
        self.events.append(event)
