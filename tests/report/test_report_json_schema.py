"""The published JSON Schema of report.json: the committed file is the generated one, and real
reports (and only sound ones) validate against it with a JSON Schema validator of its own."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tdpdm.report.schema import (
    REGENERATE_SCHEMA,
    read_report_json,
    report_json_schema,
    report_json_schema_text,
    write_report_json,
)

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "report.schema.json"


def _validator() -> jsonschema.Draft202012Validator:
    schema = report_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == report_json_schema_text(), (
        f"docs/report.schema.json is stale: regenerate it with {REGENERATE_SCHEMA}"
    )
    assert json.loads(SCHEMA_FILE.read_text(encoding="utf-8")) == report_json_schema()


def test_a_written_report_validates_against_the_schema(
    tmp_path: Path, good_report: dict[str, Any]
) -> None:
    path = tmp_path / "report.json"
    write_report_json(good_report, path)
    _validator().validate(read_report_json(path))


def test_a_report_with_a_tuning_section_validates_against_the_schema(
    good_report: dict[str, Any],
) -> None:
    event = copy.deepcopy(good_report["privacy"]["events"][0])
    good_report["tuning"] = {
        "score": "noisy held-out loss",
        "selected_trial": "t0",
        "trials": [
            {"trial_id": "t0", "status": "completed", "hyperparameters": {}, "events": [event]},
            {"trial_id": "t1", "status": "refused", "hyperparameters": {}, "events": []},
        ],
    }
    _validator().validate(json.loads(json.dumps(good_report)))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("mode",), "public"),
        (("n_records",), 0),
        (("seed",), "7"),
        (("privacy", "delta"), 1.0),
        (("privacy", "adjacency"), "substitute"),
        (("privacy", "statement"), " "),
        (("privacy", "events"), []),
        (("privacy", "events", 0, "kind"), "laplace"),
        (("privacy", "events", 0, "steps"), 0),
        (("metrics", "fid"), "n/a"),
        (("stages", 0, "details"), "x"),
    ],
)
def test_the_schema_refuses_what_the_model_refuses(
    good_report: dict[str, Any], path: tuple[Any, ...], value: Any
) -> None:
    node: Any = good_report
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(good_report)
