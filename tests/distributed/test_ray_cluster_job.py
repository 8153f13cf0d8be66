"""The pipeline as a Ray job on a real two-node cluster on 127.0.0.1.

`ray start --head` plus a second `ray start` node, `ray job submit` of `jobs/pipeline.py` with
the example `jobs/runtime_env.yaml` (the working directory is uploaded as a user would), a
`private`-mode run whose stage-2 search runs its trials on the cluster. Checked: the job
SUCCEEDED, its release and custodian parts exist (the private latents in the custodian part
only, no work area left), the report validates and its guarantee composes what the ledger
holds. The cluster is torn down in a fixture finaliser, whatever happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from ray_cluster_support import RAY, LocalCluster, ray_env, start_two_node_cluster
from tdpdm_test_support import require_shared_datasets

from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.ledger import SETTLED, Ledger
from tdpdm.report.schema import read_report_json
from tdpdm.stages.artifacts import RunLayout

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 900


@pytest.fixture
def cluster(tmp_path: Path):
    logs = tmp_path / "cluster-logs"
    logs.mkdir()
    started = time.monotonic()
    c = start_two_node_cluster(logs)
    print(f"cluster up in {time.monotonic() - started:.1f} s")
    try:
        yield c
    finally:
        c.stop()


def _ray(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, *args], capture_output=True, text=True, timeout=timeout, env=ray_env()
    )


def _wait_for_job(cluster: LocalCluster, job_id: str) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = "?"
    while time.monotonic() < deadline:
        status = cluster.job_status(job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(3)
    raise TimeoutError(f"job {job_id} still {status} after {JOB_TIMEOUT_S} s")


def test_pipeline_job_on_a_two_node_cluster(cluster: LocalCluster, tmp_path: Path):
    data_dir = require_shared_datasets()
    out, ledger = tmp_path / "run", tmp_path / "ledger.json"
    job_id = f"tdpdm-test-{uuid.uuid4().hex[:8]}"
    settings = {
        "subset": 400,
        "seed": 5,
        "distributed.backend": "local",
        "stage1.epochs": 1,
        "stage1.batch_size": 128,
        "stage1.width": 8,
        "stage1.latent_dim": 8,
        "stage2.epochs": 3,
        "stage2.batch_size": 120,
        "stage2.sampler_steps": 5,
        "tune.trials": 3,
        "tune.budgeted_trials": 2,
        "tune.max_concurrent_trials": 2,
        "tune.reports": 2,
        "tune.hidden": "[32,48]",
        "tune.depth": "[1]",
        "evaluation.enabled": "false",
        "evaluation.synthetic_count": 50,
    }
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    started = time.monotonic()
    submit = _ray(
        "job", "submit",
        "--address", cluster.dashboard,
        "--submission-id", job_id,
        "--working-dir", str(REPO),
        "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"),
        "--no-wait",
        "--",
        sys.executable, "jobs/pipeline.py",
        "--mode", "private",
        "--dataset", "mnist",
        "--epsilon", "8",
        "--data-dir", str(data_dir),
        "--out", str(out),
        "--ledger", str(ledger),
        "--cache-dir", str(tmp_path / "cache"),
        "--job-id", "cluster-run",
        "--no-progress",
        *sets,
        timeout=300,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout + submit.stderr
    state = _wait_for_job(cluster, job_id)
    status_text = _ray("job", "status", "--address", cluster.dashboard, job_id)
    elapsed = time.monotonic() - started
    logs = _ray("job", "logs", "--address", cluster.dashboard, job_id).stdout
    print(f"job {job_id}: {state} after {elapsed:.1f} s")
    assert state == "SUCCEEDED", logs[-4000:] + cluster.logs()
    assert "succeeded" in status_text.stdout + status_text.stderr  # what a user is told

    # The job's own summary and every artifact it announces, in its part.
    assert "guarantee: epsilon = " in logs and "tune: chose" in logs
    layout = RunLayout(str(out))
    release, custodian = Path(layout.release()), Path(layout.custodian())
    for name in ("synthetic/part-0.parquet", "samples.png", "report.html", "report.json"):
        assert (release / name).is_file(), name
    for name in ("models/autoencoder.pt", "models/diffusion.pt"):
        assert (release / name).is_file(), name
    assert (custodian / "report.json").is_file() and Path(layout.latents("private")).is_file()
    assert not (release / "latents").exists()  # private latents never sit in the release
    assert not Path(layout.work).exists()  # secret generator state deleted on success
    report = read_report_json(release / "report.json")
    assert report["run_id"] == "cluster-run" and report["mode"] == "private"
    trials = report["tuning"]["trials"]
    assert len(trials) == 3 and any(t["status"] == "completed" for t in trials)

    book = Ledger(str(ledger))
    charges = book.charges("mnist")
    assert all(c.status == SETTLED for c in charges)
    assert {c.job_id for c in charges} >= {"cluster-run"}
    spent = [e for c in charges for e in c.spent]
    bound = compute_epsilon(spent, 1e-5, Adjacency.ADD_REMOVE)
    assert report["privacy"]["epsilon"] == pytest.approx(bound.epsilon, rel=1e-9)
    assert book.spent("mnist").epsilon <= 8.0
    assert json.loads((release / "report.json").read_text())["privacy"]["budget"]["epsilon"] == 8.0
