"""RayTelemetry on a real local Ray: the node's metrics agent exports ray_tdpdm_* series, and
Prometheus finds them with the dashboard's `(ray_)?tdpdm_...` selectors.

Needs the optional `ray` extra; skipped without it.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_support import PrometheusServer

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ray_metrics_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A one-CPU local Ray whose metrics agent listens on a free loopback port."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # Ray 2.60 defaults to token auth
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        yield port
    finally:
        ray.shutdown()


def wait_for_text(url: str, needles: list[str], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read().decode()
        except OSError:
            body = ""
        if all(n in body for n in needles):
            return body
        time.sleep(0.5)
    pytest.fail(f"{needles} not exported within {timeout}s; last body:\n{body[-3000:]}")


def test_ray_workers_export_prefixed_metrics(
    ray_metrics_port: int, start_prometheus: Callable[..., PrometheusServer]
) -> None:
    @ray.remote
    class Reporter:
        def report(self) -> bool:
            from tdpdm.telemetry import RayTelemetry

            t = RayTelemetry()
            t.privacy("mnist", 3.5, 10.0, 1e-5)
            t.job("ray-run", "running")
            t.stage("ray-run", "stage1", 0.5)
            t.step("stage1", 7, 0.25, 123.0)
            return True

    reporter = Reporter.remote()  # an actor keeps its process (and its metrics) alive
    assert ray.get(reporter.report.remote())
    url = f"http://127.0.0.1:{ray_metrics_port}/metrics"
    body = wait_for_text(url, ["ray_tdpdm_privacy_epsilon_spent", "ray_tdpdm_training_steps_total"])
    assert "# TYPE ray_tdpdm_training_steps_total counter" in body

    server = start_prometheus([f"127.0.0.1:{ray_metrics_port}"])

    def one_value(expected: float) -> Callable[[list[dict[str, Any]]], bool]:
        return lambda r: len(r) == 1 and float(r[0]["value"][1]) == expected

    server.wait_for(
        'max by (dataset) ({__name__=~"(ray_)?tdpdm_privacy_epsilon_spent"})',
        one_value(3.5),
        timeout=30,
    )
    server.wait_for(
        'sum by (stage) ({__name__=~"(ray_)?tdpdm_training_steps_total"})',
        one_value(7.0),
        timeout=30,
    )
    running = server.query(
        'max by (run_id) ({__name__=~"(ray_)?tdpdm_job_status", status="running"})'
    )
    assert [(r["metric"]["run_id"], float(r["value"][1])) for r in running] == [("ray-run", 1.0)]
