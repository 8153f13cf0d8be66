"""A training worker SIGKILLed mid-run: Ray Train restarts the group from the last checkpoint.

The resumed run must end at exactly the planned step count, charge exactly the steps of an
uninterrupted run (so the same epsilon), and, because every rank's sampling, noise and loss
generator is restored with the weights, produce the very model the uninterrupted run produces.
Both runs use one fixed mechanism key (a test-only stand-in for the fresh secret key a run
draws): only then can the resumed run be compared with the uninterrupted one.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from train_support import Collect, logged_slow_loss, ship_to_ray_workers, tiny_autoencoder

from tdpdm.config import DistributedConfig
from tdpdm.distributed.stage1_train import train_dpsgd_on_ray
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dpsgd import DPSGDError, DPSGDPlan

N_RECORDS, BATCH, STEPS, EVERY, SEED = 256, 32, 40, 5, 4
PLAN = DPSGDPlan("stage1", 1.1, BATCH / N_RECORDS, STEPS, 1.0, BATCH)
KEY = MechanismKey("stage1-dpsgd", 0xFA17)
KILL_AFTER_CALLS = 12
INPUT_NOISE = 0.05
"""The loss draws from torch's global generator: a resume must restore that stream too."""


def _calls(log_dir: Path, rank: int) -> dict[int, int]:
    """pid -> loss calls, for every process that has been rank `rank`."""
    out = {}
    for path in log_dir.glob(f"rank{rank}-*.calls"):
        text = path.read_text()
        if text:
            out[int(path.stem.split("-")[1])] = int(text)
    return out


def _train(tmp_path: Path, name: str, max_failures: int, result: dict) -> None:
    log_dir = tmp_path / f"{name}-calls"
    log_dir.mkdir()
    session = Collect()
    result["session"] = session
    try:
        result["outcome"] = train_dpsgd_on_ray(
            functools.partial(tiny_autoencoder, SEED),
            [torch.rand(N_RECORDS, 1, 28, 28, generator=torch.Generator().manual_seed(1))],
            functools.partial(
                logged_slow_loss, log_dir=str(log_dir), delay_s=0.15, input_noise=INPUT_NOISE
            ),
            PLAN,
            session,
            cfg=DistributedConfig(num_workers=2, checkpoint_every=EVERY, max_failures=max_failures),
            storage_path=str(tmp_path / f"{name}-ray"),
            lr=2e-3,
            key=KEY,
            progress=False,
        )
    except Exception as err:
        result["error"] = err


def _kill_rank1_mid_run(tmp_path: Path, name: str, result: dict) -> tuple[int, int]:
    """Start training in a thread; SIGKILL rank 1 once it is past a checkpoint."""
    worker = threading.Thread(target=_train, args=(tmp_path, name, result[0], result[1]))
    worker.start()
    log_dir, deadline = tmp_path / f"{name}-calls", time.monotonic() + 300
    victim = None
    while victim is None and time.monotonic() < deadline and worker.is_alive():
        for pid, calls in _calls(log_dir, 1).items():
            if calls >= KILL_AFTER_CALLS:
                victim = (pid, calls)
        time.sleep(0.05)
    assert victim is not None, "rank 1 never got past its first checkpoint"
    os.kill(victim[0], signal.SIGKILL)
    worker.join(timeout=400)
    assert not worker.is_alive()
    return victim


@pytest.mark.slow
def test_killed_worker_resumes_with_the_uninterrupted_epsilon_and_model(local_ray, tmp_path):
    ship_to_ray_workers()
    clean: dict = {}
    _train(tmp_path, "clean", 2, clean)
    assert "error" not in clean, clean.get("error")

    killed: dict = {}
    victim_pid, calls_before_kill = _kill_rank1_mid_run(tmp_path, "killed", (2, killed))
    assert "error" not in killed, killed.get("error")

    # The group really restarted: a new rank-1 process, which began at a checkpoint > 0.
    rank1 = _calls(tmp_path / "killed-calls", 1)
    assert victim_pid in rank1 and len(rank1) == 2
    (restarted_calls,) = [c for pid, c in rank1.items() if pid != victim_pid]
    resumed_at = STEPS - restarted_calls
    assert resumed_at % EVERY == 0 and EVERY <= resumed_at <= calls_before_kill

    # Same steps charged once, same epsilon as the uninterrupted run.
    outcome = killed["outcome"]
    assert outcome.steps == clean["outcome"].steps == STEPS
    assert killed["session"].events == clean["session"].events == [PLAN.event()]
    eps = [
        compute_epsilon(r["session"].events, 1e-5, Adjacency.ADD_REMOVE).epsilon
        for r in (clean, killed)
    ]
    assert eps[0] == eps[1]

    # Restored generators: the redone steps drew the same batches, noise and loss randomness.
    for name, p in outcome.model.state_dict().items():
        torch.testing.assert_close(p, clean["outcome"].model.state_dict()[name])


@pytest.mark.slow
def test_failure_without_retries_charges_the_checkpointed_steps(local_ray, tmp_path):
    ship_to_ray_workers()
    failed: dict = {}
    _, calls_before_kill = _kill_rank1_mid_run(tmp_path, "failed", (0, failed))
    assert isinstance(failed.get("error"), DPSGDError)
    assert "checkpointed steps charged" in str(failed["error"])
    (event,) = failed["session"].events
    assert event.steps % EVERY == 0 and EVERY <= event.steps <= calls_before_kill + 1
    assert event == PLAN.event(steps=event.steps)
