"""Fixtures for the audit tests: real data, fresh ledgers, and the test-only noise switch."""

from __future__ import annotations

from pathlib import Path
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


@pytest.fixture
def noise_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """FAULT INJECTION, test process only: every DP noise draw becomes zero.

    Opacus's optimizers add their Gaussian noise through `_generate_noise`; the latent releases
    draw theirs through `release_noise` in `tdpdm.stages.release` and
    `tdpdm.stages.lipschitz_release`. These are patched here and nowhere else: there is no
    product switch for this. The ledger still records the *planned* mechanisms, so the claimed
    epsilon is what the accountant says for the real noise, and an audit with power must then
    report a lower bound above it. Needs `distributed.backend=local` (Ray workers are other
    processes)."""
    import opacus.optimizers.optimizer as opacus_optimizer

    import tdpdm.stages.lipschitz_release as lipschitz_release
    import tdpdm.stages.release as release

    def zeros(std: float, reference: torch.Tensor, **_: Any) -> torch.Tensor:
        return torch.zeros_like(reference)

    def no_release_noise(key: Any, shape: tuple[int, ...], std: float) -> np.ndarray:
        return np.zeros(shape)

    monkeypatch.setattr(opacus_optimizer, "_generate_noise", zeros)
    monkeypatch.setattr(release, "release_noise", no_release_noise)
    monkeypatch.setattr(lipschitz_release, "release_noise", no_release_noise)
