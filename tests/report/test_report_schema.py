"""The report contract: good reports pass, each kind of bad field fails naming that field."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tdpdm.report.schema import (
    REQUIRED_FIELDS,
    read_report_json,
    validate_report,
    write_report_json,
)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(report: dict[str, Any]) -> None:
        node: Any = report
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(report: dict[str, Any]) -> None:
        node: Any = report
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return apply


def test_good_report_passes(good_report: dict[str, Any]) -> None:
    validate_report(good_report)


def test_replace_one_and_null_metrics_pass(good_report: dict[str, Any]) -> None:
    good_report["mode"] = "released"
    good_report["privacy"]["adjacency"] = "replace_one"
    good_report["privacy"]["accountant"] = "pld-pessimistic"
    good_report["metrics"] = dict.fromkeys(["accuracy", "inception_score", "classifier_fd", "fid"])
    good_report["privacy"]["events"][2]["steps"] = 1
    validate_report(good_report)


def test_numpy_scalars_pass(good_report: dict[str, Any]) -> None:
    good_report["privacy"]["epsilon"] = np.float64(3.2)
    good_report["privacy"]["events"][0]["steps"] = np.int64(10)
    validate_report(good_report)


@pytest.mark.parametrize("field", sorted(REQUIRED_FIELDS))
def test_each_required_field_is_required(good_report: dict[str, Any], field: str) -> None:
    _del(field)(good_report)
    with pytest.raises(ValueError, match=rf"'{field}' is missing"):
        validate_report(good_report)


BAD_CASES = [
    (_set("privacy.epsilon", 0.0), "privacy.epsilon"),
    (_set("privacy.epsilon", -1.0), "privacy.epsilon"),
    (_set("privacy.epsilon", math.inf), "privacy.epsilon"),
    (_set("privacy.epsilon", math.nan), "privacy.epsilon"),
    (_set("privacy.epsilon", "10"), "privacy.epsilon"),
    (_set("privacy.epsilon", True), "privacy.epsilon"),
    (_set("privacy.delta", 0.0), "privacy.delta"),
    (_set("privacy.delta", 1.0), "privacy.delta"),
    (_set("privacy.delta", math.nan), "privacy.delta"),
    (_set("privacy.adjacency", "substitute"), "privacy.adjacency"),
    (_set("privacy.accountant", " "), "privacy.accountant"),
    (_set("privacy.statement", ""), "privacy.statement"),
    (_set("privacy.events", []), "privacy.events"),
    (_set("privacy.events.0", "dpsgd"), r"privacy.events\[0\]"),
    (_set("privacy.events.0.kind", "laplace"), r"privacy.events\[0\].kind"),
    (_del("privacy.events.0.kind"), r"privacy.events\[0\].kind"),
    (_del("privacy.events.0.stage"), r"privacy.events\[0\].stage"),
    (_del("privacy.events.0.noise_multiplier"), r"privacy.events\[0\].noise_multiplier"),
    (_del("privacy.events.1.sampling_rate"), r"privacy.events\[1\].sampling_rate"),
    (_del("privacy.events.1.steps"), r"privacy.events\[1\].steps"),
    (_del("privacy.events.2.noise_multiplier"), r"privacy.events\[2\].noise_multiplier"),
    (_set("privacy.events.0.noise_multiplier", 0.0), r"privacy.events\[0\].noise_multiplier"),
    (_set("privacy.events.2.noise_multiplier", -1.0), r"privacy.events\[2\].noise_multiplier"),
    (_set("privacy.events.0.sampling_rate", 0.0), r"privacy.events\[0\].sampling_rate"),
    (_set("privacy.events.0.sampling_rate", 1.5), r"privacy.events\[0\].sampling_rate"),
    (_set("privacy.events.0.steps", 0), r"privacy.events\[0\].steps"),
    (_set("privacy.events.0.steps", 10.0), r"privacy.events\[0\].steps"),
    (_set("privacy.events.2.steps", 0), r"privacy.events\[2\].steps"),
    (_set("privacy.not_covered.0", 3), r"privacy.not_covered\[0\]"),
    (_set("privacy.budget.delta", 2.0), "privacy.budget.delta"),
    (_set("privacy.budget.adjacency", "x"), "privacy.budget.adjacency"),
    (_set("privacy.budget.spent_epsilon_after_run", -0.1), "spent_epsilon_after_run"),
    (_set("privacy.budget.spent_epsilon_after_run", 25.0), "spent_epsilon_after_run"),
    (_del("metrics.fid"), "metrics.fid"),
    (_del("metrics.accuracy"), "metrics.accuracy"),
    (_set("metrics.inception_score", "9.1"), "metrics.inception_score"),
    (_set("metrics.classifier_fd", math.nan), "metrics.classifier_fd"),
    (_set("mode", "public"), "'mode'"),
    (_set("mode", "released"), "privacy.adjacency"),
    (_set("n_records", 0), "n_records"),
    (_set("n_records", 6e4), "n_records"),
    (_set("seed", "7"), "seed"),
    (_set("wall_time_s", -1.0), "wall_time_s"),
    (_set("hardware.cpu_count", "2"), "hardware.cpu_count"),
    (_set("stages.0", "encode"), r"stages\[0\]"),
    (_del("stages.1.wall_time_s"), r"stages\[1\].wall_time_s"),
    (_set("stages.0.details", "x"), r"stages\[0\].details"),
    (_set("config", "cfg"), "config"),
]


@pytest.mark.parametrize(("mutate", "field"), BAD_CASES)
def test_bad_field_is_named(
    good_report: dict[str, Any], mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    mutate(good_report)
    with pytest.raises(ValueError, match=field) as info:
        validate_report(good_report)
    assert "\n" not in str(info.value)


def test_write_is_sorted_indented_and_round_trips(
    tmp_path: Path, good_report: dict[str, Any]
) -> None:
    good_report["seed"] = np.int64(7)
    path = tmp_path / "sub" / "report.json"
    write_report_json(good_report, path)
    text = path.read_text()
    data = json.loads(text)
    assert data["seed"] == 7
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert read_report_json(path) == data
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_invalid_report_never_replaces_existing_file(
    tmp_path: Path, good_report: dict[str, Any]
) -> None:
    path = tmp_path / "report.json"
    write_report_json(good_report, path)
    before = path.read_bytes()
    good_report["privacy"]["delta"] = 0.0
    with pytest.raises(ValueError, match=r"privacy\.delta"):
        write_report_json(good_report, path)
    good_report["privacy"]["delta"] = 1e-5
    good_report["config"]["bad"] = object()
    with pytest.raises(TypeError):
        write_report_json(good_report, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
