"""End to end: Debian's Prometheus scrapes a real `tdpdm run` and agrees with the privacy ledger.

The pipeline runs as a subprocess (the installed `tdpdm` console script) on a small MNIST subset
with `--metrics-port` and `--metrics-linger-s`, so its driver serves the final figures for a few
seconds after the run. Prometheus scrapes it every second on 127.0.0.1. Once a scrape shows the
run as succeeded, every check is an instant query pinned to that same evaluation time, so a
series going stale after the subprocess exits cannot race the assertions; the epsilon-spent
series must then equal what the ledger reports for the data set, and no training loss (an
unnoised statistic of private records, exported only when the custodian opts in) is scraped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_support import PrometheusServer, require_binary
from tdpdm_test_support import require_shared_datasets

from tdpdm.privacy.ledger import Ledger

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RUN_TIMEOUT_S = 540.0  # the pipeline, start to success scraped (about 260 s on 2 busy CPUs)
LINGER_S = 8  # seconds the driver keeps serving metrics after the run
EXIT_TIMEOUT_S = 60.0  # after success is seen: linger plus shutdown
BUDGET_EPSILON = 5.0
REL = 1e-6


def tdpdm_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "tdpdm"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tdpdm.cli"]


def reserve_port() -> socket.socket:
    """A socket holding a free port on every interface (where the exporter binds by default).

    Kept open while Prometheus picks its own port, so the two cannot collide, and closed just
    before the pipeline starts.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("0.0.0.0", 0))
    return sock


class PipelineRun:
    """A `tdpdm run` subprocess with its output in a file; killed in teardown if still running."""

    def __init__(self, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def start_pipeline(tmp_path: Path) -> Iterator[Callable[[list[str]], PipelineRun]]:
    runs: list[PipelineRun] = []

    def start(argv: list[str]) -> PipelineRun:
        run = PipelineRun(argv, tmp_path / f"pipeline-{len(runs)}.log", tmp_path)
        runs.append(run)
        return run

    try:
        yield start
    finally:
        for run in runs:
            run.stop()


def query_at(server: PrometheusServer, expr: str, at: float) -> list[dict[str, Any]]:
    """Instant query evaluated at a fixed time (a snapshot that later staleness cannot change)."""
    data = server.api("/api/v1/query", query=expr, time=repr(at))
    assert data["resultType"] == "vector", data
    return list(data["result"])


def one_value(result: list[dict[str, Any]], what: str) -> float:
    assert len(result) == 1, f"{what}: expected one series, got {result}"
    return float(result[0]["value"][1])


def wait_for_success(
    server: PrometheusServer, run: PipelineRun, timeout: float
) -> list[dict[str, Any]]:
    """Poll Prometheus until a scrape shows a succeeded run; fail early if the run exits first."""
    expr = 'tdpdm_job_status{status="succeeded"} == 1'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"prometheus exited ({server.process.returncode}):\n{server.log()}")
        result = server.query(expr)
        if result:
            return result
        code = run.process.poll()
        if code is not None:
            # One more look: the last scrape may have landed between the query and the exit.
            result = server.query(f"last_over_time(({expr})[5m:1s])")
            pytest.fail(
                f"pipeline exited ({code}) before Prometheus saw it succeed (late result "
                f"{result});\npipeline log:\n{run.log()}\n"
                f"targets: {json.dumps(server.api('/api/v1/targets'))[:2000]}"
            )
        time.sleep(0.5)
    pytest.fail(
        f"no succeeded run scraped within {timeout:g} s;\npipeline log:\n{run.log()}\n"
        f"prometheus log:\n{server.log()}"
    )


def test_prometheus_scrapes_epsilon_spent_of_a_real_pipeline_run(
    start_prometheus: Callable[..., PrometheusServer],
    start_pipeline: Callable[[list[str]], PipelineRun],
    tmp_path: Path,
) -> None:
    require_binary("prometheus")  # under CI a missing binary fails here, before the long run
    data_dir = require_shared_datasets(fail_under_ci=True)
    ledger_path = tmp_path / "ledger.json"
    out_dir = tmp_path / "out"

    holder = reserve_port()
    try:
        port = int(holder.getsockname()[1])
        target = f"127.0.0.1:{port}"
        server = start_prometheus([target], scrape_interval="1s")
    finally:
        holder.close()

    started = time.monotonic()
    options = {
        "--data-dir": str(data_dir),
        "--dataset": "mnist",
        "--mode": "private",
        "--epsilon": str(BUDGET_EPSILON),
        "--delta": "1e-5",
        "--subset": "1500",
        "--seed": "0",
        "--ledger": str(ledger_path),
        "--out": str(out_dir),
        "--cache-dir": str(tmp_path / "cache"),
        "--metrics-port": str(port),
        "--metrics-linger-s": str(LINGER_S),
    }
    overrides = [
        "stage1.epochs=1",
        "stage2.epochs=3",
        "stage2.batch_size=256",
        "evaluation.synthetic_count=200",
        # Metrics of the synthetic data are not what this test is about; evaluation would
        # train a classifier on 60k real images and triple the runtime.
        "evaluation.enabled=false",
        # Not a test of Ray (tests/distributed is): starting a local Ray costs 10-20 s.
        "distributed.backend=local",
    ]
    run = start_pipeline(
        [
            *tdpdm_command(),
            "run",
            *[part for pair in options.items() for part in pair],
            "--no-progress",
            *[part for item in overrides for part in ("--set", item)],
        ]
    )

    succeeded = wait_for_success(server, run, RUN_TIMEOUT_S)
    (status,) = succeeded
    run_id = status["metric"]["run_id"]
    assert status["metric"]["job"] == "tdpdm" and status["metric"]["instance"] == target
    at = float(status["value"][0])  # every check below reads this same scrape

    def value(expr: str) -> float:
        return one_value(query_at(server, expr, at), expr)

    epsilon_series = query_at(server, 'tdpdm_privacy_epsilon_spent{dataset="mnist"}', at)
    scraped_spent = one_value(epsilon_series, "tdpdm_privacy_epsilon_spent")
    labels = epsilon_series[0]["metric"]
    assert labels["__name__"] == "tdpdm_privacy_epsilon_spent"
    assert labels["job"] == "tdpdm" and labels["instance"] == target
    budget = value('tdpdm_privacy_budget_epsilon{dataset="mnist"}')
    remaining = value('tdpdm_privacy_budget_remaining_epsilon{dataset="mnist"}')
    delta = value('tdpdm_privacy_delta{dataset="mnist"}')
    encoder_steps = value('tdpdm_training_steps_total{stage="encoder"}')
    running = value(f'tdpdm_job_status{{run_id="{run_id}", status="running"}}')
    # custodian_losses is off by default: steps and throughput are exported, losses are not.
    assert query_at(server, "tdpdm_training_loss", at) == []
    assert query_at(server, "tdpdm_training_samples_per_second", at)

    # The run ends on its own: linger, then exit 0.
    try:
        code = run.process.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pipeline still running {EXIT_TIMEOUT_S:g} s after success:\n{run.log()}")
    elapsed = time.monotonic() - started
    assert code == 0, f"tdpdm run exited {code}:\n{run.log()}"

    # The ledger's figure, as an operator reads it and through the library.
    show = ["budget", "show", "--ledger", str(ledger_path), "--dataset", "mnist", "--json"]
    shown = subprocess.run(
        [*tdpdm_command(), *show],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    ledger_view = json.loads(shown.stdout)
    ledger_spent = float(ledger_view["spent_epsilon"])
    assert ledger_spent == pytest.approx(Ledger(str(ledger_path)).spent("mnist").epsilon, rel=REL)
    assert 0.0 < ledger_spent <= BUDGET_EPSILON

    assert scraped_spent == pytest.approx(ledger_spent, rel=REL), (
        f"Prometheus has epsilon spent {scraped_spent!r}, the ledger {ledger_spent!r}"
    )
    assert budget == BUDGET_EPSILON
    assert remaining == pytest.approx(BUDGET_EPSILON - ledger_spent, rel=REL)
    assert delta == pytest.approx(1e-5, rel=REL)
    assert running == 0.0

    # The scraped run is the one that wrote the report, and its encoder steps were all counted.
    report = json.loads((out_dir / "release" / "report.json").read_text())
    assert report["run_id"] == run_id
    (encoder_stage,) = [s for s in report["stages"] if s["name"] == "encoder"]
    assert encoder_steps > 0
    assert encoder_steps == encoder_stage["details"]["steps"], (encoder_steps, encoder_stage)
    print(
        f"pipeline run {run_id}: {elapsed:.1f} s; scraped epsilon spent {scraped_spent!r} "
        f"== ledger {ledger_spent!r}; encoder steps {encoder_steps:g}"
    )
