"""The privacy ledger: budgets, reservations, recording, settling, refusals that change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from privacy_support import DELTA

from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent
from tdpdm.privacy.ledger import (
    BudgetExceededError,
    Ledger,
    LedgerError,
    NoBudgetError,
)
from tdpdm.privacy.session import PrivacySession
from tdpdm.privacy.store import LedgerStoreError, LocalFileStore, open_store

DS = "mnist"


def plan(steps: int = 200, sigma: float = 1.0, q: float = 0.05) -> list[PoissonGaussianEvent]:
    return [PoissonGaussianEvent(sigma, q, steps, "encoder")]


def eps(events, adjacency: str = "add_remove") -> float:
    return compute_epsilon(events, DELTA, adjacency).epsilon


@pytest.fixture
def ledger(ledger_path: Path) -> Ledger:
    ledger = Ledger(str(ledger_path))
    ledger.set_budget(DS, 10.0, DELTA, "add_remove")
    return ledger


# -- budgets ----------------------------------------------------------------------------------


def test_set_and_show_budget(ledger_path: Path) -> None:
    ledger = Ledger(str(ledger_path))
    assert ledger.budget(DS) is None
    assert not ledger_path.exists()  # reading creates nothing
    budget = ledger.set_budget(DS, 4.5, DELTA, "replace_one")
    assert (budget.epsilon, budget.delta, budget.adjacency) == (4.5, DELTA, Adjacency.REPLACE_ONE)
    again = Ledger(str(ledger_path)).budget(DS)  # a fresh reader sees the persisted budget
    assert again == budget
    assert Ledger(str(ledger_path)).budget("fashion-mnist") is None
    assert Ledger(str(ledger_path)).spent(DS).epsilon == 0.0
    doc = json.loads(ledger_path.read_text())
    assert doc["datasets"][DS]["budget"]["epsilon"] == 4.5
    assert doc["datasets"][DS]["budget"]["adjacency"] == "replace_one"


@pytest.mark.parametrize(
    "epsilon, delta, adjacency",
    [
        (0.0, DELTA, "add_remove"),
        (-1.0, DELTA, "add_remove"),
        (1.0, 0.0, "add_remove"),
        (1.0, 1.0, "add_remove"),
    ],
)
def test_invalid_budget_refused(ledger_path: Path, epsilon, delta, adjacency) -> None:
    with pytest.raises(LedgerError):
        Ledger(str(ledger_path)).set_budget(DS, epsilon, delta, adjacency)
    assert not ledger_path.exists()


def test_unknown_adjacency_refused(ledger_path: Path) -> None:
    with pytest.raises(ValueError, match="adjacency"):
        Ledger(str(ledger_path)).set_budget(DS, 1.0, DELTA, "neighbours")


def test_spent_without_budget_and_reserve_without_budget(ledger_path: Path) -> None:
    ledger = Ledger(str(ledger_path))
    with pytest.raises(NoBudgetError):
        ledger.spent(DS)
    with pytest.raises(NoBudgetError, match="budget set"):
        ledger.reserve(DS, "job", plan())
    assert not ledger_path.exists()


# -- reserving --------------------------------------------------------------------------------


def test_reserve_within_budget(ledger: Ledger) -> None:
    events = plan()
    charge = ledger.reserve(DS, "job-1", events)
    assert charge.status == "open" and charge.job_id == "job-1" and charge.planned == events
    assert charge.spent == []
    assert ledger.is_open(charge.charge_id)
    # An open charge counts at its full plan.
    assert ledger.spent(DS).epsilon == pytest.approx(eps(events), abs=1e-9)
    [stored] = ledger.charges(DS)
    assert stored.charge_id == charge.charge_id and stored.planned == events


def test_plan_over_budget_refused_and_ledger_bytes_unchanged(
    ledger: Ledger, ledger_path: Path
) -> None:
    ledger.reserve(DS, "first", plan(steps=300))  # about 1.4
    before = ledger_path.read_bytes()
    greedy = [PoissonGaussianEvent(0.6, 0.3, 60, "diffusion")]
    assert eps(greedy) > 10
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve(DS, "greedy", greedy)
    message = str(info.value)
    assert "epsilon=10" in message and "add_remove" in message  # the budget
    assert "diffusion" in message and "60 steps" in message and "sigma=0.6" in message  # plan
    assert "no record was read" in message
    assert ledger_path.read_bytes() == before
    assert [c.job_id for c in ledger.charges(DS)] == ["first"]


def test_composition_not_sum_decides(ledger: Ledger) -> None:
    """Two plans whose epsilons add up to more than the budget can still fit together: the
    ledger composes (PRV), it does not add epsilons."""
    events = [GaussianEvent(0.8, 1, "latent_release")]
    single = eps(events)
    together = eps(events * 2)
    assert 2 * single > 10 >= together  # precondition of this scenario
    ledger.reserve(DS, "a", events)
    ledger.reserve(DS, "b", events)
    assert ledger.spent(DS).epsilon == pytest.approx(together, abs=1e-9)


def test_budgets_are_per_dataset(ledger: Ledger) -> None:
    ledger.set_budget("fashion-mnist", 0.5, DELTA, "add_remove")
    with pytest.raises(BudgetExceededError, match="fashion-mnist"):
        ledger.reserve("fashion-mnist", "j", plan())
    ledger.reserve(DS, "j", plan())
    assert ledger.charges("fashion-mnist") == []


# -- recording and settling -------------------------------------------------------------------


def test_record_then_settle_counts_only_what_ran(ledger: Ledger) -> None:
    events = plan(steps=200)
    charge = ledger.reserve(DS, "job", events)
    ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.05, 30, "encoder"))
    ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.05, 20, "encoder"))
    assert ledger.spent(DS).epsilon == pytest.approx(eps(events), abs=1e-9)  # still open
    settled = ledger.settle(charge.charge_id, note="done early")
    assert settled.status == "settled" and settled.note == "done early"
    assert settled.spent == [PoissonGaussianEvent(1.0, 0.05, 50, "encoder")]
    ran = eps(plan(steps=50))
    assert ledger.spent(DS).epsilon == pytest.approx(ran, abs=1e-9)
    assert ran < eps(events)
    assert not ledger.is_open(charge.charge_id)
    with pytest.raises(LedgerError, match="already settled"):
        ledger.settle(charge.charge_id)
    with pytest.raises(LedgerError, match="settled"):
        ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.05, 1, "encoder"))


def test_record_beyond_plan_refused(ledger: Ledger, ledger_path: Path) -> None:
    charge = ledger.reserve(DS, "job", [*plan(steps=100), GaussianEvent(5.0, 1, "latent_release")])
    ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.05, 90, "encoder"))
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerError, match="exceeds the plan"):
        ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.05, 11, "encoder"))
    with pytest.raises(LedgerError, match="not in the plan"):  # other noise than planned
        ledger.record(charge.charge_id, PoissonGaussianEvent(0.5, 0.05, 1, "encoder"))
    with pytest.raises(LedgerError, match="not in the plan"):  # other rate than planned
        ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.5, 1, "encoder"))
    with pytest.raises(LedgerError, match="not in the plan"):  # stage not planned
        ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.05, 1, "diffusion"))
    with pytest.raises(LedgerError, match="not in the plan"):
        ledger.record(charge.charge_id, GaussianEvent(1.0, 1, "latent_release"))
    assert ledger_path.read_bytes() == before
    ledger.record(charge.charge_id, GaussianEvent(5.0, 1, "latent_release"))
    with pytest.raises(LedgerError, match="exceeds the plan"):  # the release runs once
        ledger.record(charge.charge_id, GaussianEvent(5.0, 1, "latent_release"))
    ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.05, 10, "encoder"))


def test_unknown_charge_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no charge"):
        ledger.record("does-not-exist", PoissonGaussianEvent(1.0, 0.05, 1, "encoder"))
    with pytest.raises(LedgerError, match="no charge"):
        ledger.settle("does-not-exist")


def test_cancel_releases_the_reservation(ledger: Ledger) -> None:
    charge = ledger.reserve(DS, "job", plan())
    cancelled = ledger.cancel(charge.charge_id, note="failed before reading")
    assert cancelled.status == "cancelled"
    assert ledger.spent(DS).epsilon == 0.0
    with pytest.raises(LedgerError, match="already cancelled"):
        ledger.cancel(charge.charge_id, note="again")
    # The same job id may reserve again after its charge was cancelled.
    again = ledger.reserve(DS, "job", plan())
    assert again.charge_id != charge.charge_id


def test_cancel_refused_after_a_recorded_spend(ledger: Ledger) -> None:
    charge = ledger.reserve(DS, "job", plan())
    ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.05, 1, "encoder"))
    with pytest.raises(LedgerError, match="settle it instead"):
        ledger.cancel(charge.charge_id, note="pretend nothing happened")
    assert ledger.is_open(charge.charge_id)


def test_resumed_job_gets_the_same_charge(ledger: Ledger, ledger_path: Path) -> None:
    events = plan(steps=300)
    first = PrivacySession.begin(ledger, DS, "resumable", events)
    first.record(PoissonGaussianEvent(1.0, 0.05, 100, "encoder"))
    spent_before = ledger.spent(DS).epsilon
    # The job crashes; a new process with the same job id and plan resumes.
    resumed = PrivacySession.begin(Ledger(str(ledger_path)), DS, "resumable", list(events))
    assert resumed.charge.charge_id == first.charge.charge_id
    assert resumed.charge.spent == [PoissonGaussianEvent(1.0, 0.05, 100, "encoder")]
    assert len(ledger.charges(DS)) == 1
    assert ledger.spent(DS).epsilon == pytest.approx(spent_before, abs=1e-12)
    resumed.record(PoissonGaussianEvent(1.0, 0.05, 200, "encoder"))
    resumed.settle()
    assert ledger.spent(DS).epsilon == pytest.approx(eps(events), abs=1e-9)
    other = ledger.reserve(DS, "other-resumable", events)
    with pytest.raises(LedgerError, match="different plan"):
        ledger.reserve(DS, other.job_id, plan(steps=301))


def test_lowering_budget_below_spent_refused(ledger: Ledger, ledger_path: Path) -> None:
    charge = ledger.reserve(DS, "job", plan(steps=400))
    spent = ledger.spent(DS).epsilon
    assert 1 < spent < 9
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerError, match="already spent"):
        ledger.set_budget(DS, spent * 0.9, DELTA, "add_remove")
    assert ledger_path.read_bytes() == before
    assert ledger.budget(DS).epsilon == 10.0
    ledger.set_budget(DS, spent * 1.1, DELTA, "add_remove")  # lowering above spent is allowed
    ledger.set_budget(DS, 20.0, DELTA, "add_remove")  # raising too
    assert ledger.budget(DS).epsilon == 20.0
    with pytest.raises(LedgerError, match="delta"):
        ledger.set_budget(DS, 20.0, 1e-6, "add_remove")
    assert ledger.is_open(charge.charge_id)


def test_adjacency_change_after_spend_refused(ledger: Ledger, ledger_path: Path) -> None:
    ledger.set_budget(DS, 10.0, DELTA, "replace_one")  # allowed: nothing charged yet
    ledger.set_budget(DS, 10.0, DELTA, "add_remove")
    ledger.reserve(DS, "job", plan())
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerError, match="adjacency"):
        ledger.set_budget(DS, 10.0, DELTA, "replace_one")
    assert ledger_path.read_bytes() == before
    assert ledger.budget(DS).adjacency is Adjacency.ADD_REMOVE


def test_replace_one_budget_accounts_under_replace_one(ledger_path: Path) -> None:
    ledger = Ledger(str(ledger_path))
    ledger.set_budget(DS, 5.0, DELTA, "replace_one")
    release = [GaussianEvent(1.5, 1, "latent_release")]
    assert eps(release, "add_remove") <= 5.0 < eps(release, "replace_one")
    with pytest.raises(BudgetExceededError, match="replace_one"):
        ledger.reserve(DS, "release", release)
    ledger.reserve(DS, "release", [GaussianEvent(4.0, 1, "latent_release")])
    spent = ledger.spent(DS)
    assert spent.adjacency is Adjacency.REPLACE_ONE
    assert spent.epsilon == pytest.approx(eps([GaussianEvent(4.0)], "replace_one"), abs=1e-9)


# -- the store --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"format": "tdpdm-ledger", "datasets": {',
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"format": "something-else", "datasets": {}}',
    ],
)
def test_corrupt_ledger_is_an_error_and_left_untouched(ledger_path: Path, content: bytes) -> None:
    ledger_path.parent.mkdir(parents=True)
    ledger_path.write_bytes(content)
    ledger = Ledger(str(ledger_path))
    with pytest.raises(LedgerStoreError, match="not"):
        ledger.budget(DS)
    with pytest.raises(LedgerStoreError):
        ledger.set_budget(DS, 1.0, DELTA, "add_remove")
    with pytest.raises(LedgerStoreError):
        ledger.reserve(DS, "job", plan())
    assert ledger_path.read_bytes() == content
    assert sorted(p.name for p in ledger_path.parent.iterdir() if not p.name.endswith(".lock")) == [
        ledger_path.name
    ]  # no stray temp files either


def test_empty_file_is_an_empty_ledger(ledger_path: Path) -> None:
    ledger_path.parent.mkdir(parents=True)
    ledger_path.write_bytes(b"")
    ledger = Ledger(str(ledger_path))
    assert ledger.budget(DS) is None
    ledger.set_budget(DS, 1.0, DELTA, "add_remove")
    assert json.loads(ledger_path.read_text())["format"] == "tdpdm-ledger"


@pytest.mark.parametrize("uri", ["gs://b/l.json", "http://x/l.json"])  # s3: tests/s3
def test_unsupported_uri_scheme(uri: str) -> None:
    scheme = uri.split("://")[0]
    with pytest.raises(LedgerStoreError, match=scheme):
        open_store(uri)
    with pytest.raises(LedgerStoreError, match="not supported"):
        Ledger(uri)


def test_file_uri_is_a_local_path(ledger_path: Path) -> None:
    store = open_store(f"file://{ledger_path}")
    assert isinstance(store, LocalFileStore) and store.path == ledger_path
    Ledger(f"file://{ledger_path}").set_budget(DS, 2.0, DELTA, "add_remove")
    assert Ledger(str(ledger_path)).budget(DS).epsilon == 2.0


def test_failed_transaction_writes_nothing(ledger: Ledger, ledger_path: Path) -> None:
    before = ledger_path.read_bytes()

    def boom(doc):
        doc["datasets"][DS]["budget"]["epsilon"] = 1e9
        raise RuntimeError("crash inside the transaction")

    with pytest.raises(RuntimeError, match="crash"):
        ledger.store.transact(boom)
    assert ledger_path.read_bytes() == before
    assert ledger.budget(DS).epsilon == 10.0
