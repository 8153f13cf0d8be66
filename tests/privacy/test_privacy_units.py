"""Privacy units: the per-unit bound (at most k records per unit, a secret choice per unit),
the group-privacy conversion in one place (`tdpdm.privacy.units`), and the ledger's budget
carrying the unit (mixing units on one budget refused)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tdpdm.data.units import bound_per_unit, unit_ids
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent
from tdpdm.privacy.ledger import Ledger, LedgerError
from tdpdm.privacy.units import (
    PrivacyUnit,
    UnitBound,
    UnitError,
    record_delta,
    record_target,
    unit_bound,
)

EVENTS = [PoissonGaussianEvent(1.2, 0.05, 200, "encoder"), GaussianEvent(4.0, 1, "moments")]
ADD = Adjacency.ADD_REMOVE


@pytest.mark.parametrize("k", [1, 2, 5])
def test_each_unit_keeps_at_most_k_records_chosen_within_the_unit(k: int) -> None:
    rng = np.random.default_rng(3)
    units = np.r_[np.zeros(500, int), np.arange(1, 101), np.repeat([101, 102], 3)]
    rng.shuffle(units)
    keep = bound_per_unit(units, k, np.random.default_rng(11))
    counts = np.bincount(units[keep], minlength=103)
    assert counts[0] == k  # the unit with 500 images is bounded
    assert (counts[1:101] == 1).all()  # single-image units keep their image
    assert (counts[101:] == min(k, 3)).all()


def test_the_choice_in_a_unit_is_uniform() -> None:
    """Every record of a 10-record unit is kept about k/10 of the time."""
    units = np.zeros(10, int)
    hits = sum(bound_per_unit(units, 2, np.random.default_rng(s)).astype(int) for s in range(2000))
    assert np.allclose(hits / 2000, 0.2, atol=0.04)


def test_unit_ids_of_strings_and_nulls() -> None:
    ids = unit_ids(np.array(["bob", "amy", "bob"], dtype=object), 3, "here")
    assert ids[0] == ids[2] != ids[1]
    with pytest.raises(ValueError, match="no privacy unit") as err:
        unit_ids(np.array(["bob", None], dtype=object), 2, "here")
    assert "bob" not in str(err.value)


def test_k_1_is_the_per_record_guarantee() -> None:
    plain = compute_epsilon(EVENTS, 1e-5, ADD)
    bound = unit_bound(EVENTS, 1e-5, ADD, PrivacyUnit("person", 1), cap_epsilon=8.0)
    assert bound.epsilon == pytest.approx(plain.epsilon) and bound.delta == 1e-5
    assert record_target(PrivacyUnit("person", 1), 8.0, 1e-5) == (8.0, 1e-5)


def test_k_records_per_unit_is_group_privacy_of_the_record_bound() -> None:
    unit, delta, cap = PrivacyUnit("person", 3), 1e-5, 20.0
    bound = unit_bound(EVENTS, delta, ADD, unit, cap_epsilon=cap)
    assert isinstance(bound, UnitBound)
    d_r = record_delta(unit, cap, delta)
    assert d_r == pytest.approx(delta / (3 * math.exp(2 * cap / 3)))
    record = compute_epsilon(EVENTS, d_r, ADD)
    assert bound.epsilon == pytest.approx(3 * record.epsilon)
    assert bound.record_epsilon == record.epsilon and bound.record_delta == d_r
    assert bound.epsilon <= cap and bound.delta == delta
    assert 3 * math.exp(2 * record.epsilon) * d_r <= delta  # the group delta holds
    # Over the cap (or at a cap so large that the accountant cannot reach its delta), the
    # least self-consistent cap is found: the stated delta is still met.
    for cap in (bound.epsilon / 4, 100.0):
        other = unit_bound(EVENTS, delta, ADD, unit, cap_epsilon=cap)
        assert math.isfinite(other.epsilon) and other.delta == delta
        again = compute_epsilon(EVENTS, other.record_delta, ADD).epsilon
        assert other.epsilon == pytest.approx(3 * again)
        assert 3 * math.exp(2 * again) * other.record_delta <= delta
    with pytest.raises(UnitError, match="add/remove"):
        unit_bound(EVENTS, delta, Adjacency.REPLACE_ONE, unit, cap_epsilon=cap)


def test_the_ledger_budget_carries_the_unit_and_refuses_mixing(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "ledger.json"))
    unit = PrivacyUnit("person", 3)
    ledger.set_budget("faces", 30.0, 1e-5, "add_remove", unit)
    assert ledger.budget("faces").unit == unit
    charge = ledger.reserve("faces", "job-1", EVENTS)
    spent = ledger.spent("faces")
    assert spent.epsilon == pytest.approx(unit_bound(EVENTS, 1e-5, ADD, unit, 30.0).epsilon)
    assert spent.epsilon > compute_epsilon(EVENTS, 1e-5, ADD).epsilon * 2.5
    assert charge.status == "open"
    for other in (PrivacyUnit("person", 2), PrivacyUnit("email", 3), None):
        with pytest.raises(LedgerError, match="different units") as err:
            ledger.set_budget("faces", 40.0, 1e-5, "add_remove", other)
        assert "\n" not in str(err.value)
    assert ledger.budget("faces").unit == unit
    # `tdpdm budget set` (no unit given) raises the budget and keeps its unit.
    assert ledger.set_budget("faces", 32.0, 1e-5, "add_remove").unit == unit


class _Grant:
    dataset, charge_id = "people", "c1"

    def is_active(self) -> bool:
        return True


class _Key:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def numpy(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def test_the_bound_comes_first_and_a_subset_keeps_the_public_rate() -> None:
    """One unit owns all 100 records (k = 2): two are kept, then the subset keeps each at the
    public rate subset/N = 50/100, not at 50/2 (a rate set by the bound would be private)."""
    from tdpdm.data.private import PrivateTrainingSet
    from tdpdm.data.sources import ArraySource

    images = np.zeros((100, 8, 8), np.uint8)
    source = ArraySource(images, None, None, name="people", units=np.zeros(100, int))
    kept = []
    for seed in range(300):
        records = PrivateTrainingSet(
            source, subset=50, subset_key=_Key(seed), unit="units", per_unit=2,
            unit_key=_Key(10_000 + seed),
        )  # fmt: skip
        assert records.n_records() == 50  # planned from the public count
        got, _ = records.open(_Grant())
        assert len(got) == len(records._kept_units) <= 2
        kept.append(len(got))
    assert np.mean(kept) == pytest.approx(1.0, abs=0.15)  # 2 records x rate 0.5


def test_units_are_checked_before_the_charge() -> None:
    from tdpdm.data.errors import DataError
    from tdpdm.data.private import PrivateTrainingSet
    from tdpdm.data.sources import ArraySource

    images = np.zeros((10, 8, 8), np.uint8)
    records = PrivateTrainingSet(
        ArraySource(images, None, None, name="people"), unit="units", unit_key=_Key(0)
    )
    with pytest.raises(DataError, match="no privacy units"):
        records.n_records()
    assert records.reads == 0


def test_an_npz_array_names_the_units(tmp_path: Path) -> None:
    from tdpdm.data.errors import DataError
    from tdpdm.data.npz import NpzSource

    path = tmp_path / "people.npz"
    names = np.array(["amy", "bob", "amy", "cy"])
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), person=names, short=np.zeros(3))
    source = NpzSource(str(path), name="people", image_size=8)
    source.check_units("person")
    ids = source.read_units("person")
    assert ids[0] == ids[2] and len(set(ids.tolist())) == 3
    for by, words in (("email", "no 'email' array"), ("short", "expected")):
        with pytest.raises(DataError, match=words) as err:
            source.check_units(by)
        assert "amy" not in str(err.value)
