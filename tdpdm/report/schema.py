"""The run report's contract, checked before anything is written.

A report is what a privacy officer signs off, so a malformed guarantee (a missing delta, a
non-positive noise multiplier, an event the page cannot describe) must fail loudly at write
time, with one line naming the field, rather than render as a plausible-looking page.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tdpdm.data import storage

ADJACENCIES = ("add_remove", "replace_one")
MODES = ("private", "released")
METRIC_KEYS = ("accuracy", "inception_score", "classifier_fd", "fid")

_NUM = "number"
_INT = "int"
_STR = "str"
_DICT = "dict"
_LIST = "list"

REQUIRED_FIELDS: dict[str, str] = {
    "tdpdm_version": _STR,
    "run_id": _STR,
    "dataset": _STR,
    "mode": _STR,
    "n_records": _INT,
    "seed": _INT,
    "wall_time_s": _NUM,
    "hardware": _DICT,
    "hardware.device": _STR,
    "hardware.device_name": _STR,
    "hardware.cpu": _STR,
    "hardware.cpu_count": _INT,
    "hardware.torch": _STR,
    "hardware.python": _STR,
    "hardware.platform": _STR,
    "privacy": _DICT,
    "privacy.epsilon": _NUM,
    "privacy.delta": _NUM,
    "privacy.adjacency": _STR,
    "privacy.accountant": _STR,
    "privacy.events": _LIST,
    "privacy.budget": _DICT,
    "privacy.budget.epsilon": _NUM,
    "privacy.budget.delta": _NUM,
    "privacy.budget.adjacency": _STR,
    "privacy.budget.spent_epsilon_after_run": _NUM,
    "privacy.statement": _STR,
    "privacy.not_covered": _LIST,
    "metrics": _DICT,
    "metrics_note": _STR,
    "config": _DICT,
    "stages": _LIST,
    "artifacts": _DICT,
    "artifacts.synthetic": _STR,
    "artifacts.samples_png": _STR,
    "artifacts.report_html": _STR,
}
"""Dotted path -> expected type of every field a report must carry (more are allowed)."""

EVENT_FIELDS: dict[str, dict[str, str]] = {
    "poisson_gaussian": {
        "stage": _STR,
        "noise_multiplier": _NUM,
        "sampling_rate": _NUM,
        "steps": _INT,
    },
    "gaussian": {"stage": _STR, "noise_multiplier": _NUM},
}
"""Fields each mechanism kind needs so the report can state it fully (more are allowed)."""

_MISSING = object()


def _get(report: Mapping[str, Any], dotted: str) -> Any:
    node: Any = report
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _INT:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _DICT:
        return isinstance(value, Mapping)
    return isinstance(value, list)


def _check_typed(container: Mapping[str, Any], fields: Mapping[str, str], prefix: str) -> None:
    for name, kind in fields.items():
        value = _get(container, name)
        if value is _MISSING:
            raise ValueError(f"report field '{prefix}{name}' is missing")
        if not _type_ok(value, kind):
            raise ValueError(
                f"report field '{prefix}{name}' must be {kind}, got {type(value).__name__}"
            )


def _finite_positive(value: float, name: str) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"report field '{name}' must be finite and > 0, got {value!r}")


def _delta(value: float, name: str) -> None:
    if not 0 < value < 1:
        raise ValueError(f"report field '{name}' must be in (0, 1), got {value!r}")


def _adjacency(value: str, name: str) -> None:
    if value not in ADJACENCIES:
        raise ValueError(f"report field '{name}' must be one of {ADJACENCIES}, got {value!r}")


def _nonempty(value: str, name: str) -> None:
    if not value.strip():
        raise ValueError(f"report field '{name}' must not be empty")


def _check_event(event: Any, i: int) -> None:
    where = f"privacy.events[{i}]"
    if not isinstance(event, Mapping):
        raise ValueError(f"report field '{where}' must be dict, got {type(event).__name__}")
    kind = event.get("kind")
    if kind not in EVENT_FIELDS:
        raise ValueError(
            f"report field '{where}.kind' must be one of {tuple(EVENT_FIELDS)}, got {kind!r}"
        )
    _check_typed(event, EVENT_FIELDS[kind], where + ".")
    _nonempty(event["stage"], f"{where}.stage")
    _finite_positive(event["noise_multiplier"], f"{where}.noise_multiplier")
    if kind == "poisson_gaussian":
        q = event["sampling_rate"]
        if not (math.isfinite(q) and 0 < q <= 1):
            raise ValueError(f"report field '{where}.sampling_rate' must be in (0, 1], got {q!r}")
    if "steps" in event or kind == "poisson_gaussian":
        steps = event.get("steps")
        if not _type_ok(steps, _INT) or steps < 1:
            raise ValueError(f"report field '{where}.steps' must be an int >= 1, got {steps!r}")


def _check_privacy(p: Mapping[str, Any]) -> None:
    _finite_positive(p["epsilon"], "privacy.epsilon")
    _delta(p["delta"], "privacy.delta")
    _adjacency(p["adjacency"], "privacy.adjacency")
    _nonempty(p["accountant"], "privacy.accountant")
    _nonempty(p["statement"], "privacy.statement")
    if not p["events"]:
        raise ValueError("report field 'privacy.events' must list at least one mechanism")
    for i, event in enumerate(p["events"]):
        _check_event(event, i)
    for i, item in enumerate(p["not_covered"]):
        if not isinstance(item, str):
            raise ValueError(f"report field 'privacy.not_covered[{i}]' must be str")
    b = p["budget"]
    _finite_positive(b["epsilon"], "privacy.budget.epsilon")
    _delta(b["delta"], "privacy.budget.delta")
    _adjacency(b["adjacency"], "privacy.budget.adjacency")
    spent = b["spent_epsilon_after_run"]
    if not math.isfinite(spent) or spent < 0:
        raise ValueError(
            f"report field 'privacy.budget.spent_epsilon_after_run' must be finite and >= 0, "
            f"got {spent!r}"
        )
    if spent > b["epsilon"] * (1 + 1e-9):
        raise ValueError(
            f"report field 'privacy.budget.spent_epsilon_after_run' ({spent!r}) exceeds "
            f"privacy.budget.epsilon ({b['epsilon']!r})"
        )


def _check_metrics(m: Mapping[str, Any]) -> None:
    for key in METRIC_KEYS:
        if key not in m:
            raise ValueError(f"report field 'metrics.{key}' is missing (use null when not run)")
        value = m[key]
        if value is None:
            continue
        if not _type_ok(value, _NUM) or not math.isfinite(value):
            raise ValueError(f"report field 'metrics.{key}' must be a finite number or null")


def _check_stages(stages: list[Any]) -> None:
    for i, stage in enumerate(stages):
        where = f"stages[{i}]"
        if not isinstance(stage, Mapping):
            raise ValueError(f"report field '{where}' must be dict, got {type(stage).__name__}")
        _check_typed(stage, {"name": _STR, "wall_time_s": _NUM}, where + ".")
        if "details" in stage and not isinstance(stage["details"], Mapping):
            raise ValueError(f"report field '{where}.details' must be dict")


TRIAL_STATUSES = ("completed", "stopped_by_asha", "refused", "failed")


def _check_tuning(tuning: Any) -> None:
    """The optional stage-2 search: every trial with its status and what it spent."""
    if not isinstance(tuning, Mapping):
        raise ValueError(f"report field 'tuning' must be dict, got {type(tuning).__name__}")
    _check_typed(tuning, {"trials": _LIST, "selected_trial": _STR, "score": _STR}, "tuning.")
    ids = set()
    for i, trial in enumerate(tuning["trials"]):
        where = f"tuning.trials[{i}]"
        if not isinstance(trial, Mapping):
            raise ValueError(f"report field '{where}' must be dict, got {type(trial).__name__}")
        fields = {"trial_id": _STR, "status": _STR, "hyperparameters": _DICT, "events": _LIST}
        _check_typed(trial, fields, where + ".")
        if trial["status"] not in TRIAL_STATUSES:
            raise ValueError(
                f"report field '{where}.status' must be one of {TRIAL_STATUSES}, got "
                f"{trial['status']!r}"
            )
        if trial["status"] == "refused" and trial["events"]:
            raise ValueError(f"report field '{where}.events' must be empty for a refused trial")
        for j, event in enumerate(trial["events"]):
            try:
                _check_event(event, j)
            except ValueError as err:
                raise ValueError(str(err).replace("privacy.events", f"{where}.events")) from None
        ids.add(trial["trial_id"])
    if tuning["selected_trial"] not in ids:
        raise ValueError(
            f"report field 'tuning.selected_trial' ({tuning['selected_trial']!r}) is not a trial"
        )


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise ValueError, one line naming the field, unless ``report`` meets the contract."""
    if not isinstance(report, Mapping):
        raise ValueError(f"report must be a dict, got {type(report).__name__}")
    _check_typed(report, REQUIRED_FIELDS, "")
    if report["mode"] not in MODES:
        raise ValueError(f"report field 'mode' must be one of {MODES}, got {report['mode']!r}")
    if report["n_records"] < 1:
        raise ValueError(f"report field 'n_records' must be >= 1, got {report['n_records']!r}")
    wall = report["wall_time_s"]
    if not math.isfinite(wall) or wall < 0:
        raise ValueError(f"report field 'wall_time_s' must be finite and >= 0, got {wall!r}")
    _check_privacy(report["privacy"])
    if report["mode"] == "released" and report["privacy"]["adjacency"] != "replace_one":
        # A per-record release is DP only when the record count is public (DESIGN.md, 3.2).
        raise ValueError(
            "report field 'privacy.adjacency' must be 'replace_one' in released mode, got "
            f"{report['privacy']['adjacency']!r}"
        )
    _check_metrics(report["metrics"])
    _check_stages(report["stages"])
    if report.get("tuning") is not None:
        _check_tuning(report["tuning"])


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays and paths appear in reports built from live objects."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"report value of type {type(obj).__name__} is not JSON serialisable")


def report_to_json(report: Mapping[str, Any]) -> str:
    """Canonical text: sorted keys, indent 2, strict JSON (NaN and Infinity are refused)."""
    return json.dumps(report, sort_keys=True, indent=2, allow_nan=False, default=_json_default)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temporary file in the same directory and os.replace, so readers never see a
    half-written file and a crash leaves the previous version intact."""
    storage.write_bytes_atomic(os.fspath(path), text.encode("utf-8"))


def write_report_json(report: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Validate ``report``, then write it atomically as sorted, indented JSON."""
    validate_report(report)
    atomic_write_text(path, report_to_json(report) + "\n")


def read_report_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a report written by :func:`write_report_json`."""
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    validate_report(report)
    return report
