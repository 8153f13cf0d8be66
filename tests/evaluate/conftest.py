"""Shared fixtures for the evaluation tests: real MNIST arrays and a random Inception file."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from tdpdm_test_support import shared_datasets_root, torch_threads

# DESIGN.md section 7: ../shared/datasets/ next to the repository (or $TDPDM_SHARED_DATASETS).
MNIST_DIR = shared_datasets_root() / "mnist"


def _read_idx(name: str, offset: int) -> np.ndarray:
    """Bare IDX reader (the data loader is tested elsewhere): gzip, skip the header."""
    with gzip.open(MNIST_DIR / name, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


@pytest.fixture(scope="session")
def mnist() -> dict[str, np.ndarray]:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found under {MNIST_DIR}")
    return {
        "train_images": _read_idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28),
        "train_labels": _read_idx("train-labels-idx1-ubyte.gz", 8).astype(np.int64),
        "test_images": _read_idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28),
        "test_labels": _read_idx("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64),
    }


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """On a busy 2-core machine OpenMP spin-waits make 2 threads ~5x slower than 1.

    Module scope, so it is in place before the module-scoped training fixtures run.
    """
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def random_inception_file(tmp_path_factory) -> tuple[Path, str]:
    """A pytorch-fid-shaped weights file with random weights, and its sha256.

    Conv weights get He init so pool3 features keep a useful scale through ~90 layers (torch's
    default init shrinks them to ~1e-8, which would make every distance trivially zero).
    """
    from tdpdm.evaluate.inception_fid import FIDInceptionV3

    torch.manual_seed(0)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(model.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()
