"""Shared settings and builders for the fuzz tests.

CI must be reproducible: every property test runs a bounded number of examples, derandomized
(the examples are a function of the test alone), with no example database and no deadline (a
busy 2-core CI runner must not turn slowness into flaky failures; hangs are caught by
pytest-timeout instead).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings

FUZZ = settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_SLOW = settings(FUZZ, max_examples=40)
"""For properties whose examples each cost milliseconds (Parquet writes, YAML files)."""


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX blob with an arbitrary header (no consistency checks: tests break it on purpose)."""
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def one_line(message: str) -> bool:
    return "\n" not in message and 0 < len(message) < 600


TRAIN_RECORDS = 300
TEST_RECORDS = 50


def write_split(folder: Path, prefix: str, images: np.ndarray | bytes, labels: np.ndarray) -> None:
    """`images` may be an array (written as uint8 IDX) or a ready IDX blob (hostile cases)."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = (
        images
        if isinstance(images, bytes)
        else idx_bytes(0x08, images.shape, images.astype(np.uint8).tobytes())
    )
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(blob)
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        idx_bytes(0x08, labels.shape, labels.astype(np.uint8).tobytes())
    )


def clean_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), np.arange(n) % 10
