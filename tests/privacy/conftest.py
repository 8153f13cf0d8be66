"""Fixtures for the privacy-layer tests: ledger files and the real data location."""

from __future__ import annotations

from pathlib import Path

import pytest
from privacy_support import shared_datasets_root


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real data sets (../shared/datasets next to the repo, or $TDPDM_SHARED_DATASETS)."""
    root = shared_datasets_root()
    if not (root / "mnist" / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"real data sets not found at {root}")
    return root


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledgers" / "ledger.json"


@pytest.fixture(autouse=True)
def _no_calibration_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration tests exercise the search itself, never a cached answer."""
    monkeypatch.setenv("TDPDM_CALIBRATION_CACHE", "off")
