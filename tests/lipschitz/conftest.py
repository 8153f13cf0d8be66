"""Fixtures for the Lipschitz-VAE mechanism tests: a few hundred real MNIST images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tdpdm_test_support import torch_threads

from tdpdm.data.loader import load_split


@pytest.fixture(scope="session")
def data_root(shared_datasets: Path) -> Path:
    return shared_datasets


@pytest.fixture(scope="session")
def mnist_small(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_split("mnist", str(data_root), "train")
    return images[:512].copy(), labels[:512].copy()


@pytest.fixture(autouse=True)
def _one_thread():
    """2 shared cores: keep each test on one thread."""
    with torch_threads(1):
        yield
