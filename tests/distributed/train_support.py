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


MAIN_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "main.yaml"


def main_job_args(tmp_path: Path, *extra: str) -> list[str]:
    """`tdpdm run` with the main job's config (the Ray backend) on a tiny private run, every
    path under `tmp_path` (the driver only: never shipped)."""
    from tdpdm_test_support import shared_datasets_root

    sets = {
        "subset": "400",
        "stage1.epochs": "1",
        "stage1.batch_size": "100",
        "stage1.width": "8",
        "stage1.latent_dim": "8",
        "stage2.epochs": "2",
        "stage2.batch_size": "200",
        "stage2.hidden": "32",
        "stage2.sampler_steps": "5",
        "evaluation.enabled": "false",
        "evaluation.synthetic_count": "50",
        "distributed.checkpoint_every": "2",
    }
    return [
        "run",
        "--config", str(MAIN_CONFIG),
        "--data-dir", str(shared_datasets_root()),
        "--out", str(tmp_path / "out"),
        "--ledger", str(tmp_path / "ledger.json"),
        "--cache-dir", str(tmp_path / "cache"),
        "--mode", "private",
        "--no-progress",
        *[f"--set={k}={v}" for k, v in sets.items()],
        *extra,
    ]  # fmt: skip


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
