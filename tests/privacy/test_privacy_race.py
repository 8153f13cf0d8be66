"""Racing writers: real processes reserving on one ledger file at the same moment.

Every plan fits the budget alone, only `k` of them fit together. Whatever the interleaving, the
ledger must grant exactly `k`, keep every granted charge (no lost update) and never overspend
(`race_reservations` in tests/ledger_harness.py, the same harness as the S3 test).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ledger_harness import race_reservations


@pytest.mark.timeout(300)
def test_racing_reservations_never_overspend(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.json"
    race_reservations(str(ledger_path), dict(os.environ), tmp_path)

    doc = json.loads(ledger_path.read_text())  # still valid JSON
    assert doc["format"] == "tdpdm-ledger"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ledger.json.")]
    assert leftovers == []  # no temp files left behind
