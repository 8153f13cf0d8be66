"""Ray back end: `ray.util.metrics`, exported by each node's metrics agent as `ray_<name>`.

Ray is imported only when a `RayTelemetry` is built, so `tdpdm.telemetry` imports on machines
without Ray. Ray exports a Counter named `x` as `ray_x_total`, so counters are registered
without their `_total` suffix to come out under the same name `prometheus_client` uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tdpdm.telemetry.core import (
    JOB_STATUSES,
    SPECS,
    Telemetry,
    check_progress,
    remaining_epsilon,
)

RAY_PREFIX = "ray_"

# Ray metric objects are per process; building them twice would register the name twice.
_cache_lock = threading.Lock()
_cache: dict[str, Any] = {}


def ray_metric_name(name: str, kind: str) -> str:
    """Name to give `ray.util.metrics` so the exported series is `ray_` + the Prometheus name."""
    if kind == "counter" and name.endswith("_total"):
        return name[: -len("_total")]
    return name


def _build_metrics() -> dict[str, Any]:
    try:
        from ray.util import metrics as ray_util_metrics
    except ImportError as exc:  # pragma: no cover - exercised only without ray
        raise ImportError(
            "RayTelemetry needs Ray: install tdpdm[ray] or use PrometheusTelemetry"
        ) from exc
    with _cache_lock:
        if not _cache:
            for spec in SPECS:
                counter = spec.kind == "counter"
                kind = ray_util_metrics.Counter if counter else ray_util_metrics.Gauge
                _cache[spec.name] = kind(
                    ray_metric_name(spec.name, spec.kind),
                    description=spec.help,
                    tag_keys=spec.labels,
                )
        return dict(_cache)


class RayTelemetry(Telemetry):
    """Report through Ray's metrics agent; use inside Ray tasks, actors and Train workers.

    Ray adds its own labels (WorkerId, NodeAddress, SessionName, ...), so several workers
    reporting the same gauge give several series: the dashboard aggregates with `max by`.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._metrics = _build_metrics()
        self._lock = threading.Lock()
        self._last_run_id: str | None = None

    def _set(self, name: str, value: float, **tags: str) -> None:
        self._metrics[name].set(float(value), tags={k: str(v) for k, v in tags.items()})

    def privacy(
        self, dataset: str, spent_epsilon: float, budget_epsilon: float, delta: float
    ) -> None:
        self._set("tdpdm_privacy_epsilon_spent", spent_epsilon, dataset=dataset)
        self._set("tdpdm_privacy_budget_epsilon", budget_epsilon, dataset=dataset)
        self._set(
            "tdpdm_privacy_budget_remaining_epsilon",
            remaining_epsilon(spent_epsilon, budget_epsilon),
            dataset=dataset,
        )
        self._set("tdpdm_privacy_delta", delta, dataset=dataset)

    def stage(self, run_id: str, stage: str, progress: float) -> None:
        self._set(
            "tdpdm_stage_progress_ratio", check_progress(progress), run_id=run_id, stage=stage
        )
        self._touch(run_id)

    def step(self, stage: str, steps: int, loss: float | None, samples_per_s: float) -> None:
        if steps < 0:
            raise ValueError(f"steps is an increment and cannot be negative: {steps}")
        if steps > 0:  # Ray's Counter.inc refuses 0
            self._metrics["tdpdm_training_steps_total"].inc(float(steps), tags={"stage": stage})
        if loss is not None:  # None unless the custodian opted in to unnoised losses
            self._set("tdpdm_training_loss", loss, stage=stage)
        self._set("tdpdm_training_samples_per_second", samples_per_s, stage=stage)
        with self._lock:
            run_id = self._last_run_id
        if run_id is not None and steps > 0:
            self._touch(run_id)

    def trial(self, state: str, count: int) -> None:
        self._set("tdpdm_tune_trials", count, state=state)

    def job(self, run_id: str, status: str) -> None:
        for other in JOB_STATUSES:
            if other != status:
                self._set("tdpdm_job_status", 0, run_id=run_id, status=other)
        self._set("tdpdm_job_status", 1, run_id=run_id, status=status)
        if status == "running":
            self._touch(run_id)

    def _touch(self, run_id: str) -> None:
        with self._lock:
            self._last_run_id = run_id
        self._set("tdpdm_last_progress_timestamp_seconds", self._clock(), run_id=run_id)
