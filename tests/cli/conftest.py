"""Fixtures for the CLI tests: a private working directory, capped evaluation (real data and
one torch thread: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tdpdm_test_support import small_evaluation_splits


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Relative defaults (runs/ledger.json, .tdpdm-cache) land in tmp, never in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def small_evaluation() -> Iterator[None]:
    """Cap the real splits the evaluation reads (the evaluator would otherwise train on 60k
    images for minutes); the private training read is not affected."""
    with small_evaluation_splits():
        yield
