"""Fixtures for the hostile-input tests: a tiny MNIST-shaped data set built on the spot."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_support import TEST_RECORDS, TRAIN_RECORDS, clean_arrays, write_split


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A well-formed data set: 300 training and 50 test records of random pixels."""
    root = tmp_path / "data"
    write_split(root, "train", *clean_arrays(TRAIN_RECORDS, 0))
    write_split(root, "t10k", *clean_arrays(TEST_RECORDS, 1))
    return root
