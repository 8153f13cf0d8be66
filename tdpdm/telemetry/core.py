"""Metric catalogue, the no-op base class and the process-wide telemetry slot."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["gauge", "counter"]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: the Prometheus name (counters end in `_total`), help, labels, kind."""

    name: str
    help: str
    labels: tuple[str, ...]
    kind: MetricKind = "gauge"


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "tdpdm_privacy_epsilon_spent",
        "Epsilon spent so far on the data set, per the privacy ledger (upper bound).",
        ("dataset",),
    ),
    MetricSpec(
        "tdpdm_privacy_budget_epsilon",
        "Total epsilon budget fixed for the data set in the privacy ledger.",
        ("dataset",),
    ),
    MetricSpec(
        "tdpdm_privacy_budget_remaining_epsilon",
        "Epsilon left in the data set's budget (budget minus spent, floored at 0).",
        ("dataset",),
    ),
    MetricSpec(
        "tdpdm_privacy_delta",
        "Delta of the data set's (epsilon, delta) guarantee.",
        ("dataset",),
    ),
    MetricSpec(
        "tdpdm_stage_progress_ratio",
        "Progress of a pipeline stage, from 0 to 1.",
        ("run_id", "stage"),
    ),
    MetricSpec(
        "tdpdm_last_progress_timestamp_seconds",
        "Unix time of the run's last reported progress; drives the stalled-job alert.",
        ("run_id",),
    ),
    MetricSpec(
        "tdpdm_training_steps_total",
        "Optimizer steps taken, per stage.",
        ("stage",),
        "counter",
    ),
    MetricSpec(
        "tdpdm_training_loss",
        "Most recent training loss, per stage; set only when the custodian opted in "
        "(custodian_losses).",
        ("stage",),
    ),
    MetricSpec(
        "tdpdm_training_samples_per_second",
        "Most recent training throughput in samples per second, per stage.",
        ("stage",),
    ),
    MetricSpec(
        "tdpdm_job_status",
        "1 for the run's current status, 0 for its other statuses.",
        ("run_id", "status"),
    ),
)

METRICS: dict[str, str] = {spec.name: spec.help for spec in SPECS}

# Every status a run can report; setting one zeroes the others so a dashboard shows one at a time.
JOB_STATUSES: tuple[str, ...] = ("pending", "running", "succeeded", "failed")


class Telemetry:
    """No-op telemetry: the default, so instrumented code runs without any metrics back end."""

    def privacy(
        self, dataset: str, spent_epsilon: float, budget_epsilon: float, delta: float
    ) -> None:
        """Report the ledger's state for a data set after a spend (or at start)."""

    def stage(self, run_id: str, stage: str, progress: float) -> None:
        """Report a stage's progress in [0, 1]; also marks the run as making progress now."""

    def step(self, stage: str, steps: int, loss: float | None, samples_per_s: float) -> None:
        """Report `steps` optimizer steps done since the last call. `loss` is None unless the
        custodian opted in (`custodian_losses`): a batch loss is an unnoised statistic of
        private records."""

    def job(self, run_id: str, status: str) -> None:
        """Report the run's status (pending, running, succeeded, failed)."""


def check_progress(progress: float) -> float:
    """Clamp progress to [0, 1]: a rounding overshoot must not read as 101 % on a dashboard."""
    return min(max(float(progress), 0.0), 1.0)


def remaining_epsilon(spent_epsilon: float, budget_epsilon: float) -> float:
    """Budget left, never negative (the ledger refuses overspends; this guards float noise)."""
    return max(float(budget_epsilon) - float(spent_epsilon), 0.0)


_lock = threading.Lock()
_current: Telemetry = Telemetry()


def get_telemetry() -> Telemetry:
    """The process-wide telemetry (a no-op until `set_telemetry` installs a back end)."""
    return _current


def set_telemetry(telemetry: Telemetry) -> None:
    """Install the process-wide telemetry; library code never needs to pass it around."""
    global _current
    if not isinstance(telemetry, Telemetry):
        raise TypeError(f"expected a Telemetry, got {type(telemetry).__name__}")
    with _lock:
        _current = telemetry
