"""Fixtures for the Lipschitz-VAE mechanism tests: a few hundred real MNIST images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tdpdm.data.loader import load_split

DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "datasets"


@pytest.fixture(scope="session")
def data_root() -> Path:
    assert (DATA_ROOT / "mnist").is_dir(), f"MNIST not found under {DATA_ROOT}"
    return DATA_ROOT


@pytest.fixture(scope="session")
def mnist_small(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_split("mnist", str(data_root), "train")
    return images[:512].copy(), labels[:512].copy()


@pytest.fixture(autouse=True)
def _one_thread():
    """2 shared cores: keep each test on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
