"""Every epsilon a real run prints or writes, recomputed from its events by an accountant
built here (dp_accounting PLD from `from_gaussian_mechanism`, not tdpdm's event conversion).

Printed figures are rounded *up* to 3 decimals, so the CLI's number may exceed the report's by
at most 0.001 and must never be below it. The tolerance against PLD is the one the grid
cross-check states (PRV's error band 0.01 plus discretisation).
"""

from __future__ import annotations

import io
import json
import math
import re

import pyarrow.parquet as pq
import pytest
from dp_accounting import NeighboringRelation
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from leak_support import CapturedRun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

RELATIONS = {
    "add_remove": NeighboringRelation.ADD_OR_REMOVE_ONE,
    "replace_one": NeighboringRelation.REPLACE_ONE,
}


def independent_epsilon(events: list[dict], delta: float, adjacency: str) -> float:
    total = None
    for e in events:
        if e["kind"] == "poisson_gaussian":
            part = pld_lib.from_gaussian_mechanism(
                standard_deviation=e["noise_multiplier"],
                sampling_prob=e["sampling_rate"],
                neighboring_relation=RELATIONS[adjacency],
            ).self_compose(e["steps"])
        else:
            assert e["kind"] == "gaussian", e
            part = pld_lib.from_gaussian_mechanism(
                standard_deviation=e["noise_multiplier"] / math.sqrt(e.get("count", 1)),
                sensitivity=2.0 if adjacency == "replace_one" else 1.0,
            )
        total = part if total is None else total.compose(part)
    assert total is not None
    return float(total.get_epsilon_for_delta(delta))


def _close_upper(ours: float, reference: float) -> None:
    assert reference - 0.002 - 0.002 * reference <= ours <= reference + 0.015 + 0.003 * reference


def test_every_reported_epsilon_is_recomputed(captured_run: CapturedRun) -> None:
    release = captured_run.release  # what is published: the guarantee covers exactly this part
    report = json.loads((release / "report.json").read_text())
    privacy = report["privacy"]
    adjacency = privacy["adjacency"]
    assert adjacency == ("replace_one" if captured_run.mode == "released" else "add_remove")
    reference = independent_epsilon(privacy["events"], privacy["delta"], adjacency)
    _close_upper(privacy["epsilon"], reference)
    assert privacy["epsilon"] <= privacy["target_epsilon"]

    # What the CLI printed: rounded up, never below the report's figure.
    printed = re.search(r"guarantee: epsilon = ([0-9.]+) \(upper bound\), delta = ([0-9e.-]+)",
                        captured_run.stdout)  # fmt: skip
    assert printed, captured_run.stdout
    shown = float(printed.group(1))
    assert privacy["epsilon"] <= shown <= privacy["epsilon"] + 0.001
    assert float(printed.group(2)) == privacy["delta"]
    assert f"adjacency = {adjacency}" in captured_run.stdout
    assert f"({printed.group(1)}, " in privacy["statement"]

    # The guarantee stamped into the published Parquet file is the same figure and events.
    synthetic = pq.read_schema(io.BytesIO((release / "synthetic" / "part-0.parquet").read_bytes()))
    stamped = json.loads(synthetic.metadata[b"tdpdm"])
    assert stamped["epsilon"] == privacy["epsilon"] and stamped["events"] == privacy["events"]

    # The custodian's report states the same guarantee.
    custodian = json.loads((captured_run.custodian / "report.json").read_text())
    assert custodian["privacy"] == privacy

    # Released latents carry their own guarantee (the release alone, at the time it ran).
    if captured_run.mode == "released":
        latents = pq.read_schema(captured_run.latents())
        meta = json.loads(latents.metadata[b"tdpdm"])
        release = meta["guarantee"]
        assert release["adjacency"] == "replace_one"
        _close_upper(
            release["epsilon"],
            independent_epsilon(release["events"], release["delta"], "replace_one"),
        )
        assert release["epsilon"] <= privacy["epsilon"] + 1e-9


def test_budget_line_matches_the_ledger(captured_run: CapturedRun) -> None:
    """`budget ...: spent X of B`: X is the ledger's spent epsilon, recomputed independently."""
    from tdpdm.privacy.events import event_to_dict
    from tdpdm.privacy.ledger import Ledger

    ledger = Ledger(str(captured_run.ledger))
    budget = ledger.budget("mnist")
    assert budget is not None
    events = [event_to_dict(e) for c in ledger.charges("mnist") for e in c.counted_events()]
    reference = independent_epsilon(events, budget.delta, budget.adjacency.value)
    spent = re.search(r"budget mnist: spent ([0-9.]+) of ([0-9.]+)", captured_run.stdout)
    assert spent, captured_run.stdout
    shown = float(spent.group(1))
    _close_upper(shown, reference)
    assert shown >= ledger.spent("mnist").epsilon - 1e-12
    assert float(spent.group(2)) == budget.epsilon


def test_budget_show_reports_the_recomputed_spend(
    captured_run: CapturedRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdpdm budget show` (JSON and text) on the run's ledger."""
    from tdpdm.cli import main

    ledger = ["budget", "show", "--ledger", str(captured_run.ledger), "--dataset", "mnist"]
    assert main([*ledger, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    events = [e for c in shown["charges"] for e in c.get("spent", [])]
    budget = shown["budget"]
    reference = independent_epsilon(events, budget["delta"], budget["adjacency"])
    _close_upper(shown["spent_epsilon"], reference)
    assert abs(shown["remaining_epsilon"] - (budget["epsilon"] - shown["spent_epsilon"])) < 1e-9
    assert main(ledger) == 0
    text = capsys.readouterr().out
    match = re.search(r"spent epsilon ([0-9.]+)", text)
    assert match, text
    # Rounded up: never below what was spent.
    assert shown["spent_epsilon"] <= float(match.group(1)) <= shown["spent_epsilon"] + 0.001
