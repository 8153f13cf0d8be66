"""Metrics facade: the pipeline reports privacy spend and training progress through one object.

The pipeline calls a `Telemetry` it gets from `get_telemetry()`. The default does nothing, so code
paths (and tests) that never configure monitoring pay nothing and need neither prometheus_client
nor Ray. A process outside Ray (the driver, `tdpdm run --metrics-port`) installs
`PrometheusTelemetry`; a Ray worker installs `RayTelemetry`, whose values Ray's per-node metrics
agent exports with a `ray_` prefix. `METRICS` is the single list of names both back ends export,
and the one the Grafana dashboard and the alert rules are tested against.
"""

from tdpdm.telemetry.core import (
    JOB_STATUSES,
    METRICS,
    SPECS,
    FanoutTelemetry,
    MetricSpec,
    Telemetry,
    get_telemetry,
    set_telemetry,
)
from tdpdm.telemetry.prometheus import PrometheusTelemetry
from tdpdm.telemetry.ray_metrics import RayTelemetry

__all__ = [
    "JOB_STATUSES",
    "METRICS",
    "SPECS",
    "FanoutTelemetry",
    "MetricSpec",
    "PrometheusTelemetry",
    "RayTelemetry",
    "Telemetry",
    "get_telemetry",
    "set_telemetry",
]
