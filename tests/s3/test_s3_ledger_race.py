"""Racing writers and killed writers on a ledger kept on an S3 endpoint (moto on loopback).

Racing: 8 real processes reserve on one ledger object at the same moment; every plan fits alone,
only `k` fit together: exactly `k` are granted, every grant is in the object, nothing overspent.
Killing: a writer SIGKILLed at random moments leaves the object readable and consistent
(tests/privacy/ledger_hammer.py, the same driver as the local-disk test).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
N_PROCESSES = 8
BUDGET = 9.0
SIGMA = 1.0
DELTA = 1e-5

RACER = r"""
import os, sys, time
uri, start, ready, index, sigma = sys.argv[1:6]
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.ledger import BudgetExceededError, Ledger
ledger = Ledger(uri)
ledger.budget("mnist")  # S3 client built and connected before the start signal
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


def _child_env(s3) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, **s3.env, PYTHONPATH=pythonpath)


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
def test_racing_reservations_on_s3_never_overspend(s3, tmp_path: Path) -> None:
    uri = s3.uri("ledgers", "ledger.json")
    Ledger(uri).set_budget("mnist", BUDGET, DELTA, "add_remove")
    one = [GaussianEvent(SIGMA, 1, "race")]
    composed = [compute_epsilon(one * j, DELTA, "add_remove").epsilon for j in range(1, 9)]
    k = sum(1 for e in composed if e <= BUDGET)
    assert composed[0] < BUDGET and 1 < k < N_PROCESSES
    assert composed[k - 1] < BUDGET - 0.1 < BUDGET + 0.1 < composed[k]

    start = tmp_path / "start"
    ready = [tmp_path / f"ready-{i}" for i in range(N_PROCESSES)]
    env = _child_env(s3)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, uri, str(start), str(ready[i]), str(i), str(SIGMA)],
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
        start.touch()
        results = [p.communicate(timeout=180) for p in procs]
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

    doc = json.loads(s3.get("ledgers/ledger.json"))
    assert doc["format"] == "tdpdm-ledger"
    ledger = Ledger(uri)
    charges = ledger.charges("mnist")
    assert sorted(c.charge_id for c in charges if c.status == "open") == sorted(granted)
    assert len({c.job_id for c in charges}) == len(charges)
    spent = ledger.spent("mnist").epsilon
    assert spent <= BUDGET
    assert spent == pytest.approx(composed[k - 1], abs=1e-9)


def _hammer_module():
    path = REPO / "tests" / "privacy" / "ledger_hammer.py"
    spec = importlib.util.spec_from_file_location("s3_ledger_hammer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_writer_leaves_a_consistent_s3_ledger(s3) -> None:
    hammer = _hammer_module()
    uri = s3.uri("ledger.json")
    Ledger(uri).set_budget(hammer.DATASET, 0.5, hammer.DELTA, "add_remove")

    stats = hammer.kill_loop(
        uri, _child_env(s3), iterations=30, max_delay_s=1.0, time_budget_s=150, seed=1
    )

    print(f"kills {stats.kills}, announced {stats.announced}, charges {stats.counts}")
    assert stats.kills >= 10, f"only {stats.kills} kills in the time allowed"
    assert stats.announced >= stats.kills
    assert s3.keys() == ["ledger.json"]  # one object; nothing half-written beside it
