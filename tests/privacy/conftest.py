"""Fixtures for the privacy-layer tests: ledger files, no calibration cache (real data:
`shared_datasets` in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledgers" / "ledger.json"


@pytest.fixture(autouse=True)
def _no_calibration_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration tests exercise the search itself, never a cached answer."""
    monkeypatch.setenv("TDPDM_CALIBRATION_CACHE", "off")
