"""Racing writers: real processes reserving on one ledger file at the same moment.

Every plan fits the budget alone, only `k` of them fit together. Whatever the interleaving, the
ledger must grant exactly `k`, keep every granted charge (no lost update) and never overspend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from privacy_support import DELTA

from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
N_PROCESSES = 8
BUDGET = 9.0
SIGMA = 1.0

CHILD = r"""
import os, sys, time
ledger_path, start, ready, index, sigma = sys.argv[1:6]
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.ledger import BudgetExceededError, Ledger
ledger = Ledger(ledger_path)
open(ready, "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(start):
    if time.monotonic() > deadline:
        print("NOSTART", flush=True)
        sys.exit(4)
    time.sleep(0.001)
try:
    charge = ledger.reserve("mnist", f"job-{index}", [GaussianEvent(float(sigma), 1, "race")])
except BudgetExceededError as err:
    print("REFUSED", err, flush=True)
else:
    print("OK", charge.charge_id, flush=True)
"""


def _wait_for(paths: list[Path], procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"a racer exited early: {dead[0].communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("racers did not get ready in time")
        time.sleep(0.01)


@pytest.mark.timeout(300)
def test_racing_reservations_never_overspend(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.json"
    Ledger(str(ledger_path)).set_budget("mnist", BUDGET, DELTA, "add_remove")
    one = [GaussianEvent(SIGMA, 1, "race")]
    composed = [compute_epsilon(one * j, DELTA, "add_remove").epsilon for j in range(1, 9)]
    k = sum(1 for e in composed if e <= BUDGET)
    # Preconditions: each fits alone, not all fit, and the boundary is not a rounding call.
    assert composed[0] < BUDGET and 1 < k < N_PROCESSES
    assert composed[k - 1] < BUDGET - 0.1 < BUDGET + 0.1 < composed[k]

    start = tmp_path / "start"
    ready = [tmp_path / f"ready-{i}" for i in range(N_PROCESSES)]
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(ledger_path),
                str(start),
                str(ready[i]),
                str(i),
                str(SIGMA),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(N_PROCESSES)
    ]
    try:
        _wait_for(ready, procs, timeout=180)
        start.touch()  # all racers are imported and polling: release them together
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    outputs = []
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        outputs.append(out.strip())
    granted = [o.split()[1] for o in outputs if o.startswith("OK ")]
    refused = [o for o in outputs if o.startswith("REFUSED ")]
    assert len(granted) + len(refused) == N_PROCESSES, outputs
    assert len(granted) == k, outputs
    assert all("no record was read" in r for r in refused)

    doc = json.loads(ledger_path.read_text())  # still valid JSON
    assert doc["format"] == "tdpdm-ledger"
    ledger = Ledger(str(ledger_path))
    charges = ledger.charges("mnist")
    open_ids = sorted(c.charge_id for c in charges if c.status == "open")
    assert open_ids == sorted(granted)  # every grant persisted, nothing else
    assert len({c.job_id for c in charges}) == len(charges)
    spent = ledger.spent("mnist").epsilon
    assert spent <= BUDGET
    assert spent == pytest.approx(composed[k - 1], abs=1e-9)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ledger.json.")]
    assert leftovers == []  # no temp files left behind
