"""Real processes against one ledger (a local file or an S3 object), shared by tests/privacy and
tests/s3.

Racing writers (`race_reservations`): `RACERS` processes reserve on one ledger at the same moment;
every plan fits the budget alone, only `k` of them fit together. Whatever the interleaving, the
ledger must grant exactly `k`, keep every granted charge (no lost update) and never overspend.

Killed writers (`kill_loop`): run as a script this module is a *zygote*: it imports the ledger
once, then forks one *hammer* per `go <seed>` line on stdin, so that each kill costs a fork rather
than a Python start-up. A hammer changes the ledger as fast as it can (reserve, record, settle,
cancel, resume, raise the budget: every kind of write) and announces each change only after
`transact` returned, with one atomic `os.write` per line. The driver SIGKILLs the hammer at a
random moment, then checks that the ledger is readable, well formed, within budget, and holds
every announced change (durability), before the next hammer resumes on the same ledger.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASET = "mnist"
DELTA = 1e-5
PLAN_STEPS = 100
RECORD_STEPS = 5
SIGMA, RATE = 2.0, 0.01
HAMMER_LIFETIME_S = 60.0  # a hammer nobody kills (driver died) exits on its own
REPO = Path(__file__).resolve().parents[1]


def _child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with this checkout first on PYTHONPATH: the children import this `tdpdm`."""
    path = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return dict(env, PYTHONPATH=path)


# -- racing writers ---------------------------------------------------------------------------

RACE_BUDGET = 9.0
RACE_SIGMA = 1.0
RACERS = 8
_RACER = r"""
import os, sys, time
location, start, ready, index, sigma = sys.argv[1:6]
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.ledger import BudgetExceededError, Ledger
ledger = Ledger(location)
ledger.budget("mnist")  # store opened (an S3 client connected) before the start signal
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


def race_reservations(location: str, env: dict[str, str], workdir: Path) -> list[str]:
    """Set a budget of `RACE_BUDGET` on `location`, release `RACERS` processes (each reserving
    one Gaussian of `RACE_SIGMA`) at once, and check the outcome: exactly the `k` that fit are
    granted, the others refused before reading anything, every grant kept, nothing else, and
    the spend is the composition of `k`. Returns the granted charge ids."""
    from tdpdm.privacy.accountant import compute_epsilon
    from tdpdm.privacy.events import GaussianEvent
    from tdpdm.privacy.ledger import Ledger

    Ledger(location).set_budget("mnist", RACE_BUDGET, DELTA, "add_remove")
    one = [GaussianEvent(RACE_SIGMA, 1, "race")]
    composed = [compute_epsilon(one * j, DELTA, "add_remove").epsilon for j in range(1, 9)]
    k = sum(1 for e in composed if e <= RACE_BUDGET)
    # Preconditions: each fits alone, not all fit, and the boundary is not a rounding call.
    assert composed[0] < RACE_BUDGET and 1 < k < RACERS
    assert composed[k - 1] < RACE_BUDGET - 0.1 < RACE_BUDGET + 0.1 < composed[k]

    start = workdir / "start"
    ready = [workdir / f"ready-{i}" for i in range(RACERS)]
    argv = [sys.executable, "-c", _RACER, location, str(start)]
    procs = [
        subprocess.Popen(
            [*argv, str(ready[i]), str(i), str(RACE_SIGMA)],
            cwd=REPO,
            env=_child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(RACERS)
    ]
    try:
        _wait_for(ready, procs, timeout=180)
        start.touch()  # all racers are imported and polling: release them together
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
    assert len(granted) + len(refused) == RACERS, outputs
    assert len(granted) == k, outputs
    assert all("no record was read" in r for r in refused)

    ledger = Ledger(location)
    charges = ledger.charges("mnist")
    open_ids = sorted(c.charge_id for c in charges if c.status == "open")
    assert open_ids == sorted(granted)  # every grant persisted, nothing else
    assert len({c.job_id for c in charges}) == len(charges)
    spent = ledger.spent("mnist").epsilon
    assert spent <= RACE_BUDGET
    assert abs(spent - composed[k - 1]) <= 1e-9, (spent, composed[k - 1])
    return granted


# -- killed writers ---------------------------------------------------------------------------


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) of < PIPE_BUF bytes: never torn


def hammer(location: str, seed: int) -> None:
    from tdpdm.privacy.events import PoissonGaussianEvent
    from tdpdm.privacy.ledger import OPEN, BudgetExceededError, Ledger

    rng = random.Random(seed)
    ledger = Ledger(location)
    ledger.charges(DATASET)  # client and connection ready before the driver starts its clock
    _say("READY")
    plan = [PoissonGaussianEvent(SIGMA, RATE, PLAN_STEPS, "hammer")]
    deadline = time.monotonic() + HAMMER_LIFETIME_S
    n = 0
    while time.monotonic() < deadline:
        open_charges = [c for c in ledger.charges(DATASET) if c.status == OPEN]
        if open_charges and rng.random() < 0.95:
            c = rng.choice(open_charges)
            used = sum(e.steps for e in c.spent)
            roll = rng.random()
            if roll < 0.1:
                again = ledger.reserve(DATASET, c.job_id, c.planned)
                if again.charge_id != c.charge_id:  # a resumed job must not be charged again
                    _say(f"BUG resume {c.charge_id} {again.charge_id}")
                    os._exit(3)
                _say(f"ACK resume {c.charge_id}")
            elif roll < 0.2 and not c.spent:
                ledger.cancel(c.charge_id, "hammer cancel")
                _say(f"ACK cancel {c.charge_id}")
            elif used < PLAN_STEPS:
                step = PoissonGaussianEvent(SIGMA, RATE, RECORD_STEPS, "hammer")
                ledger.record(c.charge_id, step)
                _say(f"ACK record {c.charge_id} {used + RECORD_STEPS}")
            else:
                ledger.settle(c.charge_id, "hammer settle")
                _say(f"ACK settle {c.charge_id} {used}")
        else:
            job_id = f"job-{seed}-{n}"
            n += 1
            try:
                charge = ledger.reserve(DATASET, job_id, plan)
            except BudgetExceededError:
                budget = ledger.budget(DATASET)
                raised = budget.epsilon + 1.0
                ledger.set_budget(DATASET, raised, budget.delta, budget.adjacency.value)
                _say(f"ACK budget {raised!r}")
            else:
                _say(f"ACK reserve {charge.charge_id} {job_id}")
    os._exit(0)


def zygote() -> None:
    """Import once, then fork a hammer per command; report each one's pid and exit status."""
    location = sys.argv[1]
    import tdpdm.privacy.ledger

    if location.startswith("s3://"):
        import botocore.session  # noqa: F401

        import tdpdm.privacy.store.s3  # noqa: F401
    _say("ZYGOTE")
    for line in sys.stdin:
        seed = int(line.split()[1])
        pid = os.fork()
        if pid == 0:
            try:
                hammer(location, seed)
            except BaseException as err:  # a hammer must never fall back into this loop
                _say(f"BUG {type(err).__name__}: {' '.join(str(err).split())}")
                os._exit(2)
        _say(f"PID {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"DONE {pid} {status}")


@dataclass
class Expected:
    """The least the ledger must show: every change a hammer announced before it died."""

    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    budget: float = 0.0

    def apply(self, line: str) -> None:
        _, kind, *args = line.split()
        if kind == "reserve":
            self.charges[args[0]] = {"status": "open", "steps": 0, "job_id": args[1]}
        elif kind == "record":
            self.charges.setdefault(args[0], {"status": "open"})["steps"] = int(args[1])
        elif kind in ("settle", "cancel"):
            entry = self.charges.setdefault(args[0], {"steps": 0})
            entry["status"] = "settled" if kind == "settle" else "cancelled"
            entry["steps"] = int(args[1]) if kind == "settle" else 0
        elif kind == "budget":
            self.budget = max(self.budget, float(args[0]))


def check_ledger(location: str, expected: Expected) -> dict[str, int]:
    """Assert the ledger is readable, consistent and durable; counts of charges by status."""
    from tdpdm.privacy.ledger import Ledger

    ledger = Ledger(location)
    budget = ledger.budget(DATASET)
    assert budget is not None and budget.epsilon >= expected.budget
    spent = ledger.spent(DATASET).epsilon
    assert spent <= budget.epsilon + 1e-9, (spent, budget)
    charges = ledger.charges(DATASET)
    ids = [c.charge_id for c in charges]
    assert len(ids) == len(set(ids)), "duplicate charge ids"
    open_jobs = [c.job_id for c in charges if c.status == "open"]
    assert len(open_jobs) == len(set(open_jobs)), "a job holds two open charges"
    by_id = {c.charge_id: c for c in charges}
    counts: dict[str, int] = {}
    for c in charges:
        counts[c.status] = counts.get(c.status, 0) + 1
        assert c.status in ("open", "settled", "cancelled"), c.status
        assert c.planned and all(e.steps == PLAN_STEPS for e in c.planned)
        used = sum(e.steps for e in c.spent)
        assert 0 <= used <= PLAN_STEPS and used % RECORD_STEPS == 0, (c.charge_id, used)
        assert c.status != "cancelled" or not c.spent
    for charge_id, want in expected.charges.items():
        assert charge_id in by_id, f"announced charge {charge_id} was lost"
        got = by_id[charge_id]
        used = sum(e.steps for e in got.spent)
        if want["status"] == "open":
            assert used >= want.get("steps", 0), (charge_id, used, want)
        else:
            assert got.status == want["status"], (charge_id, got.status, want)
            assert used == want["steps"], (charge_id, used, want)
    return counts


def _reader(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put("EOF")


def _next(lines: queue.Queue[str], timeout_s: float) -> str:
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"ledger hammer said nothing for {timeout_s} s") from None


@dataclass
class KillStats:
    kills: int = 0
    announced: int = 0
    mid_write: int = 0  # kills that left a local temp file: the writer died inside a write
    counts: dict[str, int] = field(default_factory=dict)


def kill_loop(
    location: str,
    env: dict[str, str],
    *,
    iterations: int,
    max_delay_s: float,
    time_budget_s: float,
    seed: int = 0,
) -> KillStats:
    """Fork, wait a random time, SIGKILL, check; `iterations` times or until the time is up."""
    rng = random.Random(seed)
    proc = subprocess.Popen(
        [sys.executable, __file__, location],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_child_env(env),
        cwd=REPO,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    stats, expected = KillStats(), Expected()
    stop_at = time.monotonic() + time_budget_s
    child = 0
    try:
        assert _next(lines, 120) == "ZYGOTE", "zygote did not start"
        while stats.kills < iterations and time.monotonic() < stop_at:
            proc.stdin.write(f"go {rng.randrange(1 << 30)}\n")
            proc.stdin.flush()
            ready = False
            while not (child and ready):  # the zygote's PID and the hammer's READY, any order
                line = _next(lines, 60)
                assert not line.startswith(("BUG", "DONE", "EOF")), line
                if line.startswith("PID "):
                    child = int(line.split()[1])
                ready = ready or line == "READY"
            time.sleep(rng.uniform(0, max_delay_s))
            os.kill(child, signal.SIGKILL)
            while not (line := _next(lines, 60)).startswith("DONE "):
                assert not line.startswith(("BUG", "EOF")), line
                if line.startswith("ACK "):
                    expected.apply(line)
                    stats.announced += 1
            child = 0
            status = int(line.split()[2])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, line
            stats.kills += 1
            if not location.startswith("s3://"):
                path = Path(location)
                stats.mid_write += any(path.parent.glob(f".{path.name}.*"))
            stats.counts = check_ledger(location, expected)
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return stats


if __name__ == "__main__":
    zygote()
