"""Fixtures for the audit tests: the test-only noise switch (real data and one torch thread:
tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch


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
