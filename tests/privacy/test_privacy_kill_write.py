"""A ledger writer SIGKILLed at random moments never leaves a torn or inconsistent ledger.

A real process hammers a local ledger file with every kind of write and is killed many times at
random points (inside the accounting, the temp-file write, the fsync, the rename); after each
kill the ledger must read back, stay within budget, and hold every change the writer announced.
The same test against an S3 endpoint lives in tests/s3/test_s3_ledger_kill.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ledger_hammer import DATASET, DELTA, kill_loop

from tdpdm.privacy.ledger import Ledger

ITERATIONS = 40


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_writer_leaves_a_consistent_ledger(tmp_path: Path) -> None:
    location = str(tmp_path / "ledger.json")
    Ledger(location).set_budget(DATASET, 0.5, DELTA, "add_remove")

    stats = kill_loop(
        location, dict(os.environ), iterations=ITERATIONS, max_delay_s=1.0, time_budget_s=150
    )

    assert stats.kills >= 15, f"only {stats.kills} kills in the time allowed"
    assert stats.announced >= stats.kills  # the hammers really wrote between kills
    # Every kind of write ran: reserves, records, settles (and budget raises when full).
    assert stats.counts.get("settled", 0) > 0 and stats.counts.get("open", 0) >= 0
    print(f"kills {stats.kills}, mid-write {stats.mid_write}, announced {stats.announced}")
    # The next write after a kill removes temp files the killed writer left behind.
    ledger = Ledger(location)
    ledger.set_budget(DATASET, ledger.budget(DATASET).epsilon, DELTA, "add_remove")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json", "ledger.json.lock"]
