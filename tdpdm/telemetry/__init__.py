"""Metrics facade: the pipeline reports privacy spend and training progress through one object.

The pipeline calls a `Telemetry` it gets from `get_telemetry()`. The default does nothing, so code
paths (and tests) that never configure monitoring pay nothing and need no prometheus_client. The
driver (`tdpdm run --metrics-port`) installs `PrometheusTelemetry`, the one back end: every
series comes from the driver's process, including what stages run on Ray did (the driver
reports a Ray stage's steps when it returns). `METRICS` is the single list of names it exports,
and the one the Grafana dashboard and the alert rules are tested against.
"""

from tdpdm.telemetry.core import (
    JOB_STATUSES,
    METRICS,
    SPECS,
    MetricSpec,
    Telemetry,
    get_telemetry,
    set_telemetry,
)
from tdpdm.telemetry.prometheus import PrometheusTelemetry

__all__ = [
    "JOB_STATUSES",
    "METRICS",
    "SPECS",
    "MetricSpec",
    "PrometheusTelemetry",
    "Telemetry",
    "get_telemetry",
    "set_telemetry",
]
