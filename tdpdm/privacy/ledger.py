"""The privacy ledger: one fixed budget per data set, and every spend against it.

A job states its plan (a list of events) and `reserve`s it: the ledger composes the plan with
every earlier charge and refuses, before the job reads a single record, if the total would
exceed the budget. While it runs, the job `record`s the events that really ran; `settle` closes
the charge at what ran. A charge still open (a job that crashed or is running) counts at its full
plan, so racing or dead jobs can never lead to an overspend; a resumed job reuses its charge (same
job id) instead of being charged twice.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tdpdm.privacy.accountant import EpsilonBound
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import (
    Event,
    GaussianEvent,
    PoissonGaussianEvent,
    event_from_dict,
    event_to_dict,
)
from tdpdm.privacy.store import Document, LedgerStore, open_store
from tdpdm.privacy.units import PrivacyUnit, UnitError, same_unit, unit_bound

OPEN, SETTLED, CANCELLED = "open", "settled", "cancelled"


class LedgerError(RuntimeError):
    """A ledger operation is not allowed (unknown charge, events outside the plan, ...)."""


class BudgetExceededError(LedgerError):
    """The plan, composed with what was already spent, exceeds the data set's budget."""


class NoBudgetError(LedgerError):
    """No budget is set for the data set."""


@dataclass(frozen=True)
class Budget:
    epsilon: float
    delta: float
    adjacency: Adjacency
    unit: PrivacyUnit | None = None
    """Set: the budget is per privacy unit, every epsilon the group conversion (`units`)."""

    def as_dict(self) -> dict[str, Any]:
        out = {"epsilon": self.epsilon, "delta": self.delta, "adjacency": self.adjacency.value}
        return out | ({"unit": self.unit.as_dict()} if self.unit else {})

    def describe(self) -> str:
        unit = f", {self.unit.describe()}" if self.unit else ""
        return f"(epsilon={self.epsilon:g}, delta={self.delta:g}, {self.adjacency.value}{unit})"

    def bound(self, events: Sequence[Event], cap_epsilon: float | None = None) -> EpsilonBound:
        """`events` composed under this budget (per unit when it has one), the record-level
        delta chosen for `cap_epsilon` (default: the budget's epsilon)."""
        cap = self.epsilon if cap_epsilon is None else cap_epsilon
        return unit_bound(events, self.delta, self.adjacency, self.unit, cap)


@dataclass
class Charge:
    """One job's claim on a data set's budget."""

    charge_id: str
    dataset: str
    job_id: str
    status: str
    planned: list[Event]
    spent: list[Event] = field(default_factory=list)
    created: str = ""
    updated: str = ""
    note: str = ""

    def counted_events(self) -> list[Event]:
        """What this charge holds against the budget: the plan while open, what ran after."""
        if self.status == OPEN:
            return list(self.planned)
        if self.status == SETTLED:
            return list(self.spent)
        return []

    def as_dict(self) -> dict[str, Any]:
        return {
            "charge_id": self.charge_id,
            "job_id": self.job_id,
            "status": self.status,
            "planned": [event_to_dict(e) for e in self.planned],
            "spent": [event_to_dict(e) for e in self.spent],
            "created": self.created,
            "updated": self.updated,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, dataset: str, data: dict[str, Any]) -> Charge:
        return cls(
            charge_id=data["charge_id"],
            dataset=dataset,
            job_id=data["job_id"],
            status=data["status"],
            planned=[event_from_dict(e) for e in data.get("planned", [])],
            spent=[event_from_dict(e) for e in data.get("spent", [])],
            created=data.get("created", ""),
            updated=data.get("updated", ""),
            note=data.get("note", ""),
        )


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def describe_events(events: Sequence[Event]) -> str:
    parts = []
    for e in events:
        if isinstance(e, PoissonGaussianEvent):
            parts.append(
                f"{e.stage or 'dp-sgd'}: {e.steps} steps q={e.sampling_rate:.4g} "
                f"sigma={e.noise_multiplier:.4g}"
            )
        else:
            parts.append(f"{e.stage or 'release'}: gaussian sigma={e.noise_multiplier:.4g}")
    return "; ".join(parts) or "no mechanisms"


class Ledger:
    """Budgets and charges per data set, persisted in a `LedgerStore`."""

    def __init__(self, location: str | LedgerStore) -> None:
        self.store = open_store(location) if isinstance(location, str) else location

    # -- budgets -----------------------------------------------------------------------------
    def budget(self, dataset: str) -> Budget | None:
        entry = self.store.read()["datasets"].get(dataset)
        return _budget_of(entry) if entry else None

    def set_budget(
        self,
        dataset: str,
        epsilon: float,
        delta: float,
        adjacency: str,
        unit: PrivacyUnit | str | None = "keep",
    ) -> Budget:
        """Set (or raise) a data set's budget. Lowering it below what is spent, or changing the
        adjacency or the privacy unit once anything was charged, is refused: each would rewrite
        history. `unit`: "keep" (the default) keeps the budget's unit, None is per record."""
        if unit == "keep":
            old_budget = self.budget(dataset)
            unit = old_budget.unit if old_budget else None
        assert unit is None or isinstance(unit, PrivacyUnit)
        budget = Budget(float(epsilon), float(delta), Adjacency.parse(adjacency), unit)
        if not (budget.epsilon > 0):
            raise LedgerError(f"budget epsilon must be positive, got {epsilon}")
        if not (0 < budget.delta < 1):
            raise LedgerError(f"budget delta must be in (0, 1), got {delta}")

        def apply(doc: Document) -> Budget:
            entry = doc["datasets"].setdefault(dataset, {"charges": []})
            charges = [Charge.from_dict(dataset, c) for c in entry.get("charges", [])]
            if charges and "budget" in entry:
                old = _budget_of(entry)
                if old.adjacency is not budget.adjacency:
                    raise LedgerError(
                        f"{dataset}: cannot change adjacency from {old.adjacency.value} to "
                        f"{budget.adjacency.value} after spending"
                    )
                if budget.delta != old.delta:
                    raise LedgerError(f"{dataset}: cannot change delta after spending")
                if budget.unit != old.unit:
                    try:
                        same_unit(old.unit, budget.unit, dataset)
                    except UnitError as err:
                        raise LedgerError(str(err)) from None
                spent = _compose(charges, budget)
                if spent.epsilon > budget.epsilon:
                    raise LedgerError(
                        f"{dataset}: already spent epsilon {spent.epsilon:.3f}; cannot set the "
                        f"budget to {budget.epsilon:g}"
                    )
            entry["budget"] = budget.as_dict() | {"set": _now()}
            return budget

        return self.store.transact(apply)

    # -- spending ----------------------------------------------------------------------------
    def spent(self, dataset: str) -> EpsilonBound:
        """Epsilon of everything charged so far (open charges at their full plan)."""
        entry = self.store.read()["datasets"].get(dataset)
        if not entry or "budget" not in entry:
            raise NoBudgetError(f"no privacy budget is set for data set {dataset!r}")
        charges = [Charge.from_dict(dataset, c) for c in entry.get("charges", [])]
        return _compose(charges, _budget_of(entry))

    def charges(self, dataset: str) -> list[Charge]:
        entry = self.store.read()["datasets"].get(dataset, {})
        return [Charge.from_dict(dataset, c) for c in entry.get("charges", [])]

    def reserve(self, dataset: str, job_id: str, planned: Sequence[Event]) -> Charge:
        """Charge a job's whole plan, or raise BudgetExceededError (ledger unchanged).

        A job id that already holds an open charge with the same plan gets that charge back:
        a resumed job is not charged twice."""
        planned = list(planned)

        def apply(doc: Document) -> Charge:
            entry = doc["datasets"].get(dataset)
            if not entry or "budget" not in entry:
                raise NoBudgetError(
                    f"no privacy budget is set for data set {dataset!r} in ledger "
                    f"{self.store.location}; set one with `tdpdm budget set`"
                )
            budget = _budget_of(entry)
            charges = [Charge.from_dict(dataset, c) for c in entry["charges"]]
            for charge in charges:
                if charge.job_id == job_id and charge.status == OPEN:
                    if charge.planned != planned:
                        raise LedgerError(
                            f"job {job_id} already holds an open charge with a different plan"
                        )
                    return charge
            total = _compose([*charges, _draft(dataset, job_id, planned)], budget)
            if total.epsilon > budget.epsilon:
                before = _compose(charges, budget).epsilon
                raise BudgetExceededError(
                    f"refused: plan [{describe_events(planned)}] would bring {dataset} to "
                    f"epsilon {total.epsilon:.3f}, over its budget {budget.describe()} "
                    f"(already spent {before:.3f}); no record was read"
                )
            charge = _draft(dataset, job_id, planned)
            entry["charges"].append(charge.as_dict())
            return charge

        return self.store.transact(apply)

    def record(self, charge_id: str, event: Event) -> Charge:
        """Add an event that ran; it must fit inside the charge's plan for its stage."""

        def apply(doc: Document) -> Charge:
            dataset, index, charge = _find(doc, charge_id)
            if charge.status != OPEN:
                raise LedgerError(f"charge {charge_id} is {charge.status}; cannot record")
            _check_within_plan(charge, event)
            _merge(charge.spent, event)
            charge.updated = _now()
            doc["datasets"][dataset]["charges"][index] = charge.as_dict()
            return charge

        return self.store.transact(apply)

    def record_rest_of_plan(self, charge_id: str) -> Charge:
        """Record, per mechanism of the plan, whatever of it is not recorded yet (one atomic
        write): the open charge then holds its full plan as spent, whatever the job ran."""

        def apply(doc: Document) -> Charge:
            dataset, index, charge = _find(doc, charge_id)
            if charge.status != OPEN:
                raise LedgerError(f"charge {charge_id} is {charge.status}; cannot record")
            for planned in charge.planned:
                allowed = sum(_amount(p) for p in charge.planned if _same_mechanism(p, planned))
                used = sum(_amount(s) for s in charge.spent if _same_mechanism(s, planned))
                if allowed > used:
                    _merge(charge.spent, _with_amount(planned, allowed - used))
            charge.updated = _now()
            doc["datasets"][dataset]["charges"][index] = charge.as_dict()
            return charge

        return self.store.transact(apply)

    def settle(self, charge_id: str, note: str = "") -> Charge:
        """Close the charge at what ran (its recorded events)."""
        return self._close(charge_id, SETTLED, note)

    def cancel(self, charge_id: str, note: str) -> Charge:
        """Drop a charge whose job read no private record (e.g. it failed before the read).
        Callers must only do this when the data access guard says nothing was read."""

        def check(charge: Charge) -> None:
            if charge.spent:
                raise LedgerError(f"charge {charge_id} has recorded spends; settle it instead")

        return self._close(charge_id, CANCELLED, note, check)

    def is_open(self, charge_id: str, dataset: str | None = None) -> bool:
        """Whether the charge is open (and, if `dataset` is given, charged to that data set)."""
        found_in, _, charge = _find(self.store.read(), charge_id)
        return charge.status == OPEN and (dataset is None or found_in == dataset)

    def _close(self, charge_id: str, status: str, note: str, check=None) -> Charge:
        def apply(doc: Document) -> Charge:
            dataset, index, charge = _find(doc, charge_id)
            if charge.status != OPEN:
                raise LedgerError(f"charge {charge_id} is already {charge.status}")
            if check:
                check(charge)
            charge.status, charge.note, charge.updated = status, note, _now()
            doc["datasets"][dataset]["charges"][index] = charge.as_dict()
            return charge

        return self.store.transact(apply)


def _budget_of(entry: dict[str, Any]) -> Budget:
    b = entry["budget"]
    unit = PrivacyUnit.from_dict(b.get("unit"))
    return Budget(float(b["epsilon"]), float(b["delta"]), Adjacency.parse(b["adjacency"]), unit)


def _draft(dataset: str, job_id: str, planned: list[Event]) -> Charge:
    now = _now()
    return Charge(
        charge_id=uuid.uuid4().hex[:16],
        dataset=dataset,
        job_id=job_id,
        status=OPEN,
        planned=planned,
        created=now,
        updated=now,
    )


def _compose(charges: Sequence[Charge], budget: Budget) -> EpsilonBound:
    events = [e for c in charges for e in c.counted_events()]
    return budget.bound(events)


def _find(doc: Document, charge_id: str) -> tuple[str, int, Charge]:
    for dataset, entry in doc["datasets"].items():
        for index, raw in enumerate(entry.get("charges", [])):
            if raw["charge_id"] == charge_id:
                return dataset, index, Charge.from_dict(dataset, raw)
    raise LedgerError(f"no charge {charge_id} in the ledger")


def _same_mechanism(a: Event, b: Event) -> bool:
    if type(a) is not type(b) or a.stage != b.stage:
        return False
    if isinstance(a, PoissonGaussianEvent):
        return a.noise_multiplier == b.noise_multiplier and a.sampling_rate == b.sampling_rate
    return a.noise_multiplier == b.noise_multiplier


def _amount(e: Event) -> int:
    return e.steps if isinstance(e, PoissonGaussianEvent) else e.count


def _with_amount(e: Event, n: int) -> Event:
    if isinstance(e, PoissonGaussianEvent):
        return PoissonGaussianEvent(e.noise_multiplier, e.sampling_rate, n, e.stage)
    return GaussianEvent(e.noise_multiplier, n, e.stage)


def _check_within_plan(charge: Charge, event: Event) -> None:
    plan = [p for p in charge.planned if _same_mechanism(p, event)]
    if not plan:
        raise LedgerError(
            f"event [{describe_events([event])}] is not in the plan of charge {charge.charge_id}"
        )
    allowed = sum(_amount(p) for p in plan)
    used = sum(_amount(s) for s in charge.spent if _same_mechanism(s, event))
    if used + _amount(event) > allowed:
        raise LedgerError(
            f"event [{describe_events([event])}] exceeds the plan of charge {charge.charge_id} "
            f"({used} of {allowed} already used)"
        )


def _merge(spent: list[Event], event: Event) -> None:
    for i, s in enumerate(spent):
        if _same_mechanism(s, event):
            spent[i] = _with_amount(s, _amount(s) + _amount(event))
            return
    spent.append(event)
