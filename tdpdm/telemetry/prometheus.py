"""prometheus_client back end: the one exporter, served by the `tdpdm run` driver."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from tdpdm.telemetry.core import (
    JOB_STATUSES,
    SPECS,
    Telemetry,
    check_progress,
    remaining_epsilon,
)


class PrometheusTelemetry(Telemetry):
    """Metrics in a private `CollectorRegistry`, served over HTTP by `serve()`.

    A private registry (not the global default) keeps two instances, e.g. in tests, from
    colliding on metric names, and keeps Python process metrics out of the tdpdm endpoint.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock  # injectable so tests can pin the last-progress timestamp
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Any] = {}
        for spec in SPECS:
            kind = Counter if spec.kind == "counter" else Gauge
            self._metrics[spec.name] = kind(
                spec.name, spec.help, labelnames=spec.labels, registry=self.registry
            )
        self._lock = threading.Lock()
        self._last_run_id: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def privacy(
        self, dataset: str, spent_epsilon: float, budget_epsilon: float, delta: float
    ) -> None:
        m = self._metrics
        m["tdpdm_privacy_epsilon_spent"].labels(dataset=dataset).set(spent_epsilon)
        m["tdpdm_privacy_budget_epsilon"].labels(dataset=dataset).set(budget_epsilon)
        m["tdpdm_privacy_budget_remaining_epsilon"].labels(dataset=dataset).set(
            remaining_epsilon(spent_epsilon, budget_epsilon)
        )
        m["tdpdm_privacy_delta"].labels(dataset=dataset).set(delta)

    def stage(self, run_id: str, stage: str, progress: float) -> None:
        self._metrics["tdpdm_stage_progress_ratio"].labels(run_id=run_id, stage=stage).set(
            check_progress(progress)
        )
        self._touch(run_id)

    def step(self, stage: str, steps: int, loss: float | None, samples_per_s: float) -> None:
        if steps < 0:
            raise ValueError(f"steps is an increment and cannot be negative: {steps}")
        m = self._metrics
        m["tdpdm_training_steps_total"].labels(stage=stage).inc(steps)
        if loss is not None:  # None unless the custodian opted in to unnoised losses
            m["tdpdm_training_loss"].labels(stage=stage).set(loss)
        m["tdpdm_training_samples_per_second"].labels(stage=stage).set(samples_per_s)
        with self._lock:
            run_id = self._last_run_id
        if run_id is not None and steps > 0:
            self._touch(run_id)

    def job(self, run_id: str, status: str) -> None:
        gauge = self._metrics["tdpdm_job_status"]
        for other in JOB_STATUSES:
            if other != status:
                gauge.labels(run_id=run_id, status=other).set(0)
        gauge.labels(run_id=run_id, status=status).set(1)
        if status == "running":
            # The stall timer starts when the run starts, not at its first progress report.
            self._touch(run_id)

    def _touch(self, run_id: str) -> None:
        with self._lock:
            self._last_run_id = run_id
        self._metrics["tdpdm_last_progress_timestamp_seconds"].labels(run_id=run_id).set(
            self._clock()
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the HTTP exporter in a daemon thread; returns the bound port (useful for 0)."""
        if self._server is not None:
            raise RuntimeError("exporter already serving")
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_address[1])

    @property
    def port(self) -> int | None:
        """The port the exporter listens on, or None before `serve()`."""
        return None if self._server is None else int(self._server.server_address[1])

    def close(self) -> None:
        """Stop the exporter (tests and clean shutdown); the metrics themselves stay readable."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
