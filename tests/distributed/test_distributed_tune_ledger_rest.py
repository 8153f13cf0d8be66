"""`Ledger.record_rest_of_plan`: a closing trial is charged whatever of its plan did not run."""

from __future__ import annotations

import pytest

from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent
from tdpdm.privacy.ledger import Ledger, LedgerError

SEGMENT = PoissonGaussianEvent(1.5, 0.25, 10, "diffusion")
SCORES = GaussianEvent(4.0, 3, "tune_score")


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    ledger = Ledger(str(tmp_path / "ledger.json"))
    ledger.set_budget("mnist", 50.0, 1e-5, "add_remove")
    return ledger


def test_the_rest_of_each_planned_mechanism_is_recorded_once(ledger):
    other = PoissonGaussianEvent(1.5, 0.25, 4, "encoder")  # same parameters, another stage
    charge = ledger.reserve("mnist", "job", [SEGMENT, SCORES, other])
    ledger.record(charge.charge_id, PoissonGaussianEvent(1.5, 0.25, 3, "diffusion"))
    ledger.record(charge.charge_id, GaussianEvent(4.0, 1, "tune_score"))
    full = ledger.record_rest_of_plan(charge.charge_id)
    assert full.spent == [SEGMENT, SCORES, other]  # per mechanism: the plan, not more
    assert ledger.record_rest_of_plan(charge.charge_id).spent == full.spent  # nothing left
    with pytest.raises(LedgerError, match="exceeds the plan"):
        ledger.record(charge.charge_id, GaussianEvent(4.0, 1, "tune_score"))
    assert ledger.settle(charge.charge_id).spent == [SEGMENT, SCORES, other]


def test_a_plan_that_repeats_a_mechanism_is_charged_its_sum(ledger):
    half = PoissonGaussianEvent(1.5, 0.25, 5, "diffusion")
    charge = ledger.reserve("mnist", "job", [half, half])
    assert ledger.record_rest_of_plan(charge.charge_id).spent == [SEGMENT]


def test_only_an_open_charge_can_be_completed(ledger):
    charge = ledger.reserve("mnist", "job", [SEGMENT])
    ledger.settle(charge.charge_id)
    with pytest.raises(LedgerError, match="settled"):
        ledger.record_rest_of_plan(charge.charge_id)
