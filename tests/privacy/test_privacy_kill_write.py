"""A ledger writer SIGKILLed at random moments never leaves a torn or inconsistent ledger.

A real process hammers a local ledger file with every kind of write and is killed many times at
random points (inside the accounting, the temp-file write, the fsync, the rename); after each
kill the ledger must read back, stay within budget, and hold every change the writer announced.
The driver is tests/ledger_harness.py; the same test against an S3 endpoint is in
tests/s3/test_s3_ledger_race.py.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import ledger_harness
import pytest
from ledger_harness import DATASET, DELTA, kill_loop

from tdpdm.privacy.ledger import Ledger

ITERATIONS = 40


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_writer_leaves_a_consistent_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = str(tmp_path / "ledger.json")
    Ledger(location).set_budget(DATASET, 0.5, DELTA, "add_remove")
    # Tally the changes the hammers announced: each is checked for durability after the kill.
    announced: Counter[str] = Counter()
    apply = ledger_harness.Expected.apply

    def tally(self: ledger_harness.Expected, line: str) -> None:
        announced[line.split()[1]] += 1
        apply(self, line)

    monkeypatch.setattr(ledger_harness.Expected, "apply", tally)

    stats = kill_loop(
        location, dict(os.environ), iterations=ITERATIONS, max_delay_s=1.0, time_budget_s=150
    )

    print(f"kills {stats.kills}, mid-write {stats.mid_write}, announced {dict(announced)}")
    assert stats.kills >= 15, f"only {stats.kills} kills in the time allowed"
    assert stats.announced >= stats.kills  # the hammers really wrote between kills
    # Reserves and records were announced, so the durability checks had changes of both kinds
    # to look for; and a charge went all the way to settled (reserve, 20 records, settle).
    assert announced["reserve"] >= 1 and announced["record"] >= 1, dict(announced)
    assert stats.counts.get("settled", 0) > 0, stats.counts
    # Kills inside a write (`mid_write`, a temp file left behind) are reported, not asserted:
    # their share depends on how long fsync takes (2 to 26 of 40 kills on one ext4 disk, none
    # on tmpfs), so any threshold would be flaky.
    # The next write after a kill removes temp files the killed writer left behind.
    ledger = Ledger(location)
    ledger.set_budget(DATASET, ledger.budget(DATASET).epsilon, DELTA, "add_remove")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json", "ledger.json.lock"]
