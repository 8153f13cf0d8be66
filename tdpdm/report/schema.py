"""The run report's contract, checked before anything is written, and published as JSON Schema.

A report is what a privacy officer signs off, so a malformed guarantee (a missing delta, a
non-positive noise multiplier, an event the page cannot describe) must fail loudly at write
time, with one line naming the field, rather than render as a plausible-looking page. The
contract is the pydantic model `Report` (strict types: a JSON number is not a string, a count
is not a float); `docs/report.schema.json` is generated from it for readers in other languages.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from tdpdm.choices import DATASET_NAME, Adjacency, Mode
from tdpdm.data import storage

TrialStatus = Literal["completed", "stopped_by_asha", "refused", "failed"]
TRIAL_STATUSES: tuple[str, ...] = get_args(TrialStatus)


def _integral(value: Any) -> Any:
    """numpy integers (a report built from live arrays) are ints; bools and floats are not."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]
Count = Annotated[int, Field(ge=1), BeforeValidator(_integral)]  # bounds first: in the schema
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Delta = Annotated[float, Field(gt=0, lt=1)]
DatasetName = Annotated[str, Field(pattern=DATASET_NAME)]
"""A built-in's name or the name of the user's own data (the ledger's key)."""
Text = Annotated[str, Field(pattern=r"\S")]
"""Text with at least one non-blank character."""


class _FieldProblem(ValueError):
    """A rule over several fields, naming the one at fault (relative to the model raising it)."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(text)
        self.field = field


class _Part(BaseModel):
    """Strict types, NaN and infinities refused, extra fields allowed (reports grow)."""

    model_config = ConfigDict(
        strict=True, extra="allow", allow_inf_nan=False, use_attribute_docstrings=True
    )


class Hardware(_Part):
    device: str
    device_name: str
    cpu: str
    cpu_count: Int
    torch: str
    python: str
    platform: str


class PoissonGaussianEvent(_Part):
    """DP-SGD: `steps` Poisson-subsampled Gaussian steps."""

    kind: Literal["poisson_gaussian"]
    stage: Text
    noise_multiplier: Positive
    sampling_rate: Annotated[float, Field(gt=0, le=1)]
    steps: Count


class GaussianEvent(_Part):
    """One Gaussian release (or `steps` of them)."""

    kind: Literal["gaussian"]
    stage: Text
    noise_multiplier: Positive
    steps: Count | None = None


Event = Annotated[PoissonGaussianEvent | GaussianEvent, Field(discriminator="kind")]
EVENT_KINDS: tuple[str, ...] = tuple(
    get_args(m.model_fields["kind"].annotation)[0] for m in (PoissonGaussianEvent, GaussianEvent)
)


class Budget(_Part):
    """The data set's ledger budget and what it has spent including this run."""

    epsilon: Positive
    delta: Delta
    adjacency: Adjacency
    spent_epsilon_after_run: NonNegative

    @model_validator(mode="after")
    def _within(self) -> Budget:
        if self.spent_epsilon_after_run > self.epsilon * (1 + 1e-9):
            raise _FieldProblem(
                "spent_epsilon_after_run",
                f"({self.spent_epsilon_after_run!r}) exceeds privacy.budget.epsilon "
                f"({self.epsilon!r})",
            )
        return self


class Privacy(_Part):
    """The guarantee of this run's release: (epsilon, delta)-DP under `adjacency`."""

    epsilon: Positive
    delta: Delta
    adjacency: Adjacency
    accountant: Text
    """Which accountant computed epsilon, and whether it is an upper bound."""
    events: Annotated[list[Event], Field(min_length=1)]
    """Every mechanism that read private data, as accounted."""
    budget: Budget
    statement: Text
    """The guarantee in plain words."""
    not_covered: list[str]
    """What the guarantee does not cover (e.g. custodian-only metrics)."""


class Metrics(_Part):
    """The utility metrics every report states, null when not run (more are allowed)."""

    accuracy: float | None
    inception_score: float | None
    classifier_fd: float | None
    fid: float | None


class Stage(_Part):
    name: str
    wall_time_s: float
    details: dict[str, Any] = {}


class Artifacts(_Part):
    synthetic: str
    samples_png: str
    report_html: str


class Trial(_Part):
    """One stage-2 search trial with its status and what it spent."""

    trial_id: str
    status: TrialStatus
    hyperparameters: dict[str, Any]
    events: list[Event]

    @model_validator(mode="after")
    def _refused_spends_nothing(self) -> Trial:
        if self.status == "refused" and self.events:
            raise _FieldProblem("events", "must be empty for a refused trial")
        return self


class Tuning(_Part):
    """The optional stage-2 search."""

    trials: list[Trial]
    selected_trial: str
    score: str

    @model_validator(mode="after")
    def _selected_is_a_trial(self) -> Tuning:
        if self.selected_trial not in {t.trial_id for t in self.trials}:
            raise _FieldProblem("selected_trial", f"({self.selected_trial!r}) is not a trial")
        return self


class Report(_Part):
    """report.json: who ran what, under which guarantee, with what result."""

    tdpdm_version: str
    run_id: str
    dataset: DatasetName
    mode: Mode
    n_records: Count
    seed: Int
    wall_time_s: NonNegative
    hardware: Hardware
    privacy: Privacy
    metrics: Metrics
    metrics_note: str
    config: dict[str, Any]
    """The run's configuration (tdpdm.config.RunConfig.as_dict)."""
    stages: list[Stage]
    artifacts: Artifacts
    tuning: Tuning | None = None

    @model_validator(mode="after")
    def _released_is_replace_one(self) -> Report:
        # A per-record release is DP only when the record count is public (DESIGN.md, 3.2).
        if self.mode == "released" and self.privacy.adjacency != "replace_one":
            raise _FieldProblem(
                "privacy.adjacency",
                f"must be 'replace_one' in released mode, got {self.privacy.adjacency!r}",
            )
        return self


METRIC_KEYS = tuple(Metrics.model_fields)


def _required(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if field.is_required():
            out.append(prefix + name)
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                out += _required(field.annotation, f"{prefix}{name}.")
    return out


REQUIRED_FIELDS: tuple[str, ...] = tuple(_required(Report))
"""Dotted path of every field a report must carry (read from `Report`; more are allowed)."""


def report_json_schema() -> dict[str, Any]:
    """The contract as JSON Schema, as committed in docs/report.schema.json (a test keeps the
    file equal to this). Checks that JSON Schema cannot state (NaN, the budget arithmetic, the
    cross-field rules) are only in `validate_report`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema"} | Report.model_json_schema()


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise ValueError, one line naming the field, unless ``report`` meets the contract."""
    if not isinstance(report, Mapping):
        raise ValueError(f"report must be a dict, got {type(report).__name__}")
    try:
        Report.model_validate(dict(report))
    except ValidationError as err:
        message = _message(err.errors(include_url=False)[0])
        raise ValueError(" ".join(message.split())) from None  # one line, whatever the keys


_KIND_NAMES = {"int": "int", "float": "number", "string": "str", "list": "list", "dict": "dict"}


def _message(error: Any) -> str:
    loc, kind, value = list(error["loc"]), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    # A discriminated union puts the event's kind in the location: drop it.
    loc = [p for i, p in enumerate(loc) if not (p in EVENT_KINDS and isinstance(loc[i - 1], int))]
    problem = ctx.get("error")
    if isinstance(problem, _FieldProblem):
        loc.append(problem.field)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("kind")
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    field = f"report field '{path}'"
    if isinstance(problem, ValueError):
        return f"{field} {problem}"
    if kind in ("missing", "union_tag_not_found"):
        hint = " (use null when not run)" if path.startswith("metrics.") else ""
        return f"{field} is missing{hint}"
    if kind == "union_tag_invalid":
        return f"{field} must be one of {EVENT_KINDS}, got {ctx.get('tag')!r}"
    if kind == "literal_error":
        return f"{field} must be one of {ctx['expected']}, got {value!r}"
    if kind == "too_short":
        return f"{field} must list at least one mechanism"
    if kind == "string_pattern_mismatch":
        return f"{field} must not be empty"
    if kind == "finite_number":
        return f"{field} must be a finite number, got {value!r}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
    bounds |= {"less_than_equal": "<="}
    if kind in bounds:
        return f"{field} must be {bounds[kind]} {next(iter(ctx.values()))}, got {value!r}"
    if kind in ("model_type", "model_attributes_type"):
        return f"{field} must be dict, got {type(value).__name__}"
    name = _KIND_NAMES.get(kind.split("_")[0])
    if name:
        return f"{field} must be {name}, got {type(value).__name__}"
    return f"{field}: {' '.join(str(error['msg']).split())}"


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


REGENERATE_SCHEMA = (
    "python -c 'from tdpdm.report.schema import report_json_schema_text as t; "
    'print(t(), end="")\' > docs/report.schema.json'
)


def report_json_schema_text() -> str:
    """docs/report.schema.json's exact text (REGENERATE_SCHEMA writes it)."""
    return json.dumps(report_json_schema(), indent=2, sort_keys=True) + "\n"
