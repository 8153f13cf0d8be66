"""Fixtures for the audit tests: real data, fresh ledgers, and the test-only noise switch."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from audit_support import datasets_root


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    root = datasets_root()
    if not (root / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real data sets not found at {root}")
    return root


@pytest.fixture
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _NoiselessGenerator:
    """A numpy Generator whose Gaussian draws are all zero (everything else untouched)."""

    def __init__(self, real: np.random.Generator) -> None:
        self._real = real

    def normal(self, loc: Any = 0.0, scale: Any = 1.0, size: Any = None) -> np.ndarray:
        return np.zeros(size) + loc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _NumpyWithoutGaussianNoise:
    """Stands in for `numpy` inside `tdpdm.stages.release` only."""

    random = SimpleNamespace(
        default_rng=lambda *a, **k: _NoiselessGenerator(np.random.default_rng(*a, **k)),
        SeedSequence=np.random.SeedSequence,
    )

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@pytest.fixture
def noise_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """FAULT INJECTION, test process only: every DP noise draw becomes zero.

    Opacus's optimizers add their Gaussian noise through `_generate_noise`; the latent release
    draws it from numpy inside `tdpdm.stages.release`. Both are patched here and nowhere else:
    there is no product switch for this. The ledger still records the *planned* mechanisms, so
    the claimed epsilon is what the accountant says for the real noise, and an audit with power
    must then report a lower bound above it. Needs `distributed.backend=local` (Ray workers
    are other processes)."""
    import opacus.optimizers.optimizer as opacus_optimizer

    import tdpdm.stages.release as release

    def zeros(std: float, reference: torch.Tensor, **_: Any) -> torch.Tensor:
        return torch.zeros_like(reference)

    monkeypatch.setattr(opacus_optimizer, "_generate_noise", zeros)
    monkeypatch.setattr(release, "np", _NumpyWithoutGaussianNoise())
