"""Racing writers and killed writers on a ledger kept on an S3 endpoint (moto on loopback).

Racing: 8 real processes reserve on one ledger object at the same moment; every plan fits alone,
only `k` fit together: exactly `k` are granted, every grant is in the object, nothing overspent.
Killing: a writer SIGKILLed at random moments leaves the object readable and consistent.
Both drivers are those of the local-disk tests (tests/ledger_harness.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ledger_harness
import pytest

from tdpdm.privacy.ledger import Ledger


def _child_env(s3) -> dict[str, str]:
    return dict(os.environ, **s3.env)


@pytest.mark.timeout(300)
def test_racing_reservations_on_s3_never_overspend(s3, tmp_path: Path) -> None:
    ledger_harness.race_reservations(s3.uri("ledgers", "ledger.json"), _child_env(s3), tmp_path)

    doc = json.loads(s3.get("ledgers/ledger.json"))
    assert doc["format"] == "tdpdm-ledger"
    assert s3.keys() == ["ledgers/ledger.json"]  # one object; nothing half-written beside it


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_writer_leaves_a_consistent_s3_ledger(s3) -> None:
    uri = s3.uri("ledger.json")
    Ledger(uri).set_budget(ledger_harness.DATASET, 0.5, ledger_harness.DELTA, "add_remove")

    stats = ledger_harness.kill_loop(
        uri, _child_env(s3), iterations=30, max_delay_s=1.0, time_budget_s=150, seed=1
    )

    print(f"kills {stats.kills}, announced {stats.announced}, charges {stats.counts}")
    assert stats.kills >= 10, f"only {stats.kills} kills in the time allowed"
    assert stats.announced >= stats.kills
    assert s3.keys() == ["ledger.json"]  # one object; nothing half-written beside it
