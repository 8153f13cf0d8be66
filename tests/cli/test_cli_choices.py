"""Each closed set of names is defined once (tdpdm.choices): the command line, the config, the
report contract and the layers below agree with it."""

from __future__ import annotations

import argparse
from typing import get_args

import pytest

from tdpdm import choices
from tdpdm.cli import build_parser
from tdpdm.config import RunConfig, Stage1Config, Stage2Config
from tdpdm.data.catalog import DATASETS as CATALOG
from tdpdm.data.sources import NAME_RE
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.report.schema import Privacy, Report


def _choices(command: str, dest: str) -> tuple[str, ...]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if a.dest == dest)
    return tuple(action.choices)


@pytest.mark.parametrize("command", ["run", "encode", "diffuse", "audit"])
def test_run_flags_offer_exactly_the_config_choices(command: str) -> None:
    assert _choices(command, "mode") == choices.MODES
    assert _choices(command, "dataset") == choices.DATASETS
    assert _choices(command, "stage1.mechanism") == choices.STAGE1_MECHANISMS


def test_other_commands_use_the_same_sets() -> None:
    assert _choices("evaluate", "dataset") == choices.DATASETS
    assert _choices("budget", "adjacency") == choices.ADJACENCIES


def test_config_and_report_validate_against_the_shared_literals() -> None:
    fields = RunConfig.model_fields
    assert fields["mode"].annotation is choices.Mode
    # A data set is a built-in or the user's own (issue 15): one name pattern for both.
    assert fields["dataset"].annotation is str
    assert Stage1Config.model_fields["mechanism"].annotation is choices.Stage1Mechanism
    assert Stage2Config.model_fields["released_model"].annotation is choices.ReleasedModel
    assert Report.model_fields["mode"].annotation is choices.Mode
    assert Report.model_fields["dataset"].metadata[0].pattern == choices.DATASET_NAME
    assert Privacy.model_fields["adjacency"].annotation is choices.Adjacency


def test_the_layers_below_know_the_same_names() -> None:
    """The data catalog (the bottom floor, importing no other layer) and the accountant's
    Adjacency enum keep their own definitions: they must name the same things."""
    assert set(CATALOG) == set(get_args(choices.Dataset))
    assert NAME_RE.pattern == choices.DATASET_NAME
    assert {a.value for a in Adjacency} == set(get_args(choices.Adjacency))


def test_help_marks_the_weak_per_record_mechanisms_experimental() -> None:
    """Issue 14: a mode that gives near-chance data says so where users choose it."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices["run"]._actions}
    assert "EXPERIMENTAL" in actions["mode"].help and "released" in actions["mode"].help
    assert "EXPERIMENTAL" in actions["stage1.mechanism"].help
