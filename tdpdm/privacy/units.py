"""Guarantees per privacy unit (a person with several images): the one place where the
accountant's record-level epsilon becomes a unit-level one.

A run with a privacy unit first bounds every unit to at most `k` records by a secret random
choice that depends on that unit's records only (`tdpdm.data.units.bound_per_unit`). After
that, adding or removing one unit changes at most k records of what the mechanisms read, so
group privacy applies: a mechanism that is (eps_r, delta_r)-DP per record is
(k eps_r, k e^{(k-1) eps_r} delta_r)-DP per group of k records (Dwork & Roth 2014, Thm 2.2 and
its (eps, delta) form; valid for every mechanism, no assumption on the accountant).

The events on the ledger stay record-level plain objects (what ran, with which noise); the
data set's budget carries the unit and k, and every epsilon the ledger, the plan and the report
compare or print is `unit_bound` of the record-level events. The record-level delta is chosen
from a cap (the budget's or the run's target epsilon): delta_r = delta / (k e^{(k-1) cap / k}),
so that a unit-level epsilon at or under the cap comes with a unit-level delta at or under
delta. Above the cap (or where the accountant cannot reach so small a delta), `unit_bound`
searches the least self-consistent cap; failing that, the honest larger delta is stated.
For k = 1 the conversion is the identity: the per-record guarantee is the per-unit one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tdpdm.privacy.accountant import EpsilonBound, compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import Event


class UnitError(ValueError):
    """A privacy-unit setting that cannot be honoured (mixing units on one budget, ...)."""


@dataclass(frozen=True)
class PrivacyUnit:
    """What one unit is (`by`: a Parquet column, the `units` array, ...) and its bound `k`."""

    by: str
    k: int = 1

    def __post_init__(self) -> None:
        if int(self.k) != self.k or self.k < 1:
            raise UnitError(f"records per privacy unit must be a positive integer, got {self.k}")

    def as_dict(self) -> dict[str, Any]:
        return {"by": self.by, "records_per_unit": int(self.k)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PrivacyUnit | None:
        return None if not data else cls(str(data["by"]), int(data["records_per_unit"]))

    def in_words(self) -> str:
        """The neighbouring relation, per unit."""
        return (
            f"adding or removing one privacy unit ({self.by}; at most {self.k} "
            f"record{'s' if self.k > 1 else ''} of each unit are used, chosen at random in secret)"
        )

    def describe(self) -> str:
        return f"privacy unit {self.by}, at most {self.k} records each"


def same_unit(a: PrivacyUnit | None, b: PrivacyUnit | None, dataset: str) -> None:
    """Refuse a run whose unit (or its absence) differs from its budget's: charges under
    different units or bounds do not compose into one guarantee."""
    if a == b:
        return
    have = a.describe() if a else "per record (no privacy unit)"
    want = b.describe() if b else "per record (no privacy unit)"
    raise UnitError(
        f"{dataset}: its ledger budget is stated {have}, but this run is {want}: charges "
        "under different units do not add up to one guarantee; use the budget's setting (or "
        "another data set name)"
    )


def record_delta(unit: PrivacyUnit, cap_epsilon: float, delta: float) -> float:
    """The record-level delta whose group conversion stays within `delta` up to `cap_epsilon`."""
    k = unit.k
    return delta / (k * math.exp((k - 1) * cap_epsilon / k))


def record_target(unit: PrivacyUnit | None, epsilon: float, delta: float) -> tuple[float, float]:
    """(epsilon, delta) to calibrate record-level mechanisms to for a unit-level target."""
    if unit is None:
        return epsilon, delta
    return epsilon / unit.k, record_delta(unit, epsilon, delta)


@dataclass(frozen=True)
class UnitBound(EpsilonBound):
    """A unit-level bound, with the record-level one it was converted from."""

    unit: PrivacyUnit | None = None
    record_epsilon: float = 0.0
    record_delta: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        unit = self.unit.as_dict() if self.unit else {}
        return super().as_dict() | {
            "unit": unit,
            "record_epsilon": self.record_epsilon,
            "record_delta": self.record_delta,
        }


def unit_bound(
    events: Sequence[Event],
    delta: float,
    adjacency: Adjacency | str,
    unit: PrivacyUnit | None,
    cap_epsilon: float,
) -> EpsilonBound:
    """The epsilon bound to compare and print: record-level without a unit, else the group
    conversion of the accountant's record-level bound (see the module docstring).

    The record delta is first chosen for `cap_epsilon`. When that bound exceeds the cap (or the
    accountant cannot go down to so small a delta and answers infinity), the least
    self-consistent cap is searched from below: c = k eps_r(delta_r(c)), each step valid only
    once the bound is at or under its own cap, so the delta stated is always met."""
    if unit is None:
        return compute_epsilon(events, delta, adjacency)
    adjacency = Adjacency.parse(adjacency)
    if adjacency is not Adjacency.ADD_REMOVE:
        raise UnitError("a privacy unit needs add/remove adjacency (mode private)")
    best = _converted(events, delta, adjacency, unit, cap_epsilon)
    if best.epsilon <= cap_epsilon or unit.k == 1:
        return best
    cap = _converted(events, delta, adjacency, unit, 0.0).epsilon
    for _ in range(40):
        if not math.isfinite(cap):
            break
        bound = _converted(events, delta, adjacency, unit, cap)
        if bound.epsilon <= cap:
            return bound if bound.epsilon < best.epsilon or best.delta > delta else best
        cap = bound.epsilon * 1.002
    return best


def _converted(
    events: Sequence[Event], delta: float, adjacency: Adjacency, unit: PrivacyUnit, cap: float
) -> UnitBound:
    d_r = record_delta(unit, cap, delta)
    record = compute_epsilon(events, d_r, adjacency)
    k = unit.k
    epsilon = k * record.epsilon
    honest = k * math.exp((k - 1) * record.epsilon) * d_r if math.isfinite(epsilon) else 1.0
    return UnitBound(
        epsilon=epsilon,
        delta=delta if honest <= delta else min(1.0, honest),
        adjacency=adjacency,
        accountant=f"{record.accountant}; group privacy over k={k} records per unit",
        unit=unit,
        record_epsilon=record.epsilon,
        record_delta=d_r,
    )
