"""`compute_epsilon` against references that share no code with the accountant it uses.

Add/remove: the product uses prv-accountant; the reference is Google's dp_accounting PLD
accountant, fed independently built events. PRV reports an upper bound that includes its error
band (0.01), and PLD's pessimistic discretisation is an upper bound too; the two must agree
closely, and PRV's figure may not sit meaningfully *below* PLD's (an optimistic, unsafe bound).
Replace-one: the product uses dp_accounting's PLD itself, so the reference is the numpy/scipy
privacy-loss computation of `privacy_support.replace_one_reference_epsilon`.
"""

from __future__ import annotations

import math

import pytest
from dp_accounting import NeighboringRelation
from privacy_support import (
    DELTA,
    assert_replace_one_bound,
    dpsgd_dp_event,
    gaussian_dp_event,
    pld_reference,
    replace_one_reference_epsilon,
)

from tdpdm.privacy import accountant
from tdpdm.privacy.accountant import compute_epsilon, pld_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent, to_dp_event

ADD_REMOVE = NeighboringRelation.ADD_OR_REMOVE_ONE


def _agree(ours: float, reference: float) -> None:
    assert math.isfinite(ours) and ours > 0
    assert abs(ours - reference) <= 0.05 + 0.02 * reference, (ours, reference)
    # PRV's reported figure is an upper bound including its error band: never clearly below.
    assert ours >= reference - 0.03, (ours, reference)


@pytest.mark.parametrize("steps", [100, 1000])
@pytest.mark.parametrize("q", [0.01, 0.1])
@pytest.mark.parametrize("sigma", [0.8, 1.5])
def test_dpsgd_add_remove_matches_pld(sigma: float, q: float, steps: int) -> None:
    bound = compute_epsilon([PoissonGaussianEvent(sigma, q, steps, "s")], DELTA, "add_remove")
    reference = pld_reference([dpsgd_dp_event(sigma, q, steps)], DELTA, ADD_REMOVE)
    _agree(bound.epsilon, reference)
    assert bound.delta == DELTA
    assert bound.adjacency is Adjacency.ADD_REMOVE
    assert bound.accountant


def test_mixed_events_add_remove_match_pld() -> None:
    ours = [
        PoissonGaussianEvent(1.2, 0.05, 300, "encoder"),
        PoissonGaussianEvent(0.9, 0.02, 500, "diffusion"),
        GaussianEvent(6.0, 1, "release"),
    ]
    reference = pld_reference(
        [dpsgd_dp_event(1.2, 0.05, 300), dpsgd_dp_event(0.9, 0.02, 500), gaussian_dp_event(6.0)],
        DELTA,
        ADD_REMOVE,
    )
    _agree(compute_epsilon(ours, DELTA, "add_remove").epsilon, reference)


def test_composition_is_order_free_and_grows() -> None:
    a = PoissonGaussianEvent(1.2, 0.05, 300, "a")
    b = GaussianEvent(6.0, 1, "b")
    ab = compute_epsilon([a, b], DELTA, "add_remove").epsilon
    ba = compute_epsilon([b, a], DELTA, "add_remove").epsilon
    only_a = compute_epsilon([a], DELTA, "add_remove").epsilon
    assert ab == pytest.approx(ba, abs=1e-9)
    assert ab > only_a


def test_design_example_both_adjacencies() -> None:
    """DESIGN.md 3.3: sigma=1, q=0.01, 1000 steps, delta=1e-5 -> 1.83 / 2.84."""
    event = [PoissonGaussianEvent(1.0, 0.01, 1000, "x")]
    add_remove = compute_epsilon(event, DELTA, "add_remove").epsilon
    replace_one = compute_epsilon(event, DELTA, Adjacency.REPLACE_ONE).epsilon
    assert add_remove == pytest.approx(1.83, abs=0.02)
    assert replace_one == pytest.approx(2.84, abs=0.02)


@pytest.mark.parametrize(
    "events, mechanisms",
    [
        ([PoissonGaussianEvent(1.0, 0.01, 1000, "x")], [(1.0, 0.01, 1000)]),
        ([GaussianEvent(5.0, 1, "r")], [(5.0, 1.0, 1)]),
        (
            [PoissonGaussianEvent(2.0, 0.3, 3, "enc"), GaussianEvent(3.0, 1, "rel")],
            [(2.0, 0.3, 3), (3.0, 1.0, 1)],
        ),
    ],
)
def test_replace_one_matches_independent_reference(events, mechanisms) -> None:
    """Not dp_accounting's REPLACE_ONE PLD (the product's own accountant): a numpy/scipy
    privacy-loss computation from the replace-one pair (privacy_support)."""
    bound = compute_epsilon(events, DELTA, "replace_one")
    reference = replace_one_reference_epsilon(mechanisms, DELTA)
    assert bound.adjacency is Adjacency.REPLACE_ONE
    assert_replace_one_bound(bound.epsilon, reference, str(events))


@pytest.mark.parametrize("sigma", [2.0, 5.0, 20.0])
def test_single_gaussian_release_costs_more_under_replace_one(sigma: float) -> None:
    """Replace-one moves a clipped vector by up to 2C: same noise, larger epsilon."""
    add_remove = compute_epsilon([GaussianEvent(sigma)], DELTA, "add_remove").epsilon
    replace_one = compute_epsilon([GaussianEvent(sigma)], DELTA, "replace_one").epsilon
    assert replace_one > add_remove * 1.5
    # Sensitivity 2 with noise sigma is the add/remove mechanism with noise sigma/2.
    halved = compute_epsilon([GaussianEvent(sigma / 2)], DELTA, "add_remove").epsilon
    assert replace_one == pytest.approx(halved, rel=0.03, abs=0.03)


def test_gaussian_count_composes_like_repeated_events() -> None:
    twice = compute_epsilon([GaussianEvent(4.0, count=2)], DELTA, "add_remove").epsilon
    split = compute_epsilon([GaussianEvent(4.0), GaussianEvent(4.0)], DELTA, "add_remove").epsilon
    once = compute_epsilon([GaussianEvent(4.0)], DELTA, "add_remove").epsilon
    assert twice == pytest.approx(split, abs=1e-9)
    assert twice > once


@pytest.mark.parametrize("adjacency", ["add_remove", "replace_one"])
def test_empty_event_list_is_zero(adjacency: str) -> None:
    assert compute_epsilon([], DELTA, adjacency).epsilon == 0.0
    zero_steps = [PoissonGaussianEvent(1.0, 0.1, 0, "x"), GaussianEvent(1.0, count=0)]
    assert compute_epsilon(zero_steps, DELTA, adjacency).epsilon == 0.0
    assert pld_epsilon([], DELTA, adjacency) == 0.0


def test_smaller_delta_gives_larger_epsilon() -> None:
    event = [PoissonGaussianEvent(1.0, 0.01, 1000, "x")]
    assert (
        compute_epsilon(event, 1e-7, "add_remove").epsilon
        > compute_epsilon(event, 1e-5, "add_remove").epsilon
    )


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0])
def test_bad_delta_rejected(delta: float) -> None:
    with pytest.raises(ValueError, match="delta"):
        compute_epsilon([GaussianEvent(1.0)], delta, "add_remove")


def test_unknown_adjacency_rejected() -> None:
    with pytest.raises(ValueError, match="adjacency"):
        compute_epsilon([GaussianEvent(1.0)], DELTA, "swap_two")


def test_memoised_epsilon_equals_a_fresh_one_and_builds_no_second_accountant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [PoissonGaussianEvent(1.1, 0.03, 200, "encoder"), GaussianEvent(4.0, 1, "release")]
    accountant.clear_epsilon_memo()
    built = []
    real = accountant.make_accountant
    monkeypatch.setattr(
        accountant, "make_accountant", lambda *a, **k: built.append(a) or real(*a, **k)
    )
    first = compute_epsilon(events, DELTA, "add_remove")
    # The same mechanisms under other stage labels: the same question.
    relabelled = [PoissonGaussianEvent(1.1, 0.03, 200, "x"), GaussianEvent(4.0, 1, "y")]
    second = compute_epsilon(relabelled, DELTA, Adjacency.ADD_REMOVE)
    assert len(built) == 1
    assert second == first
    fresh = real(Adjacency.ADD_REMOVE)
    fresh.compose(to_dp_event(events))
    assert first.epsilon == float(fresh.get_epsilon(DELTA))
    # Anything that changes the figure is another key: delta, adjacency, the mechanisms, order.
    compute_epsilon(events, DELTA / 10, "add_remove")
    compute_epsilon(events, DELTA, "replace_one")
    compute_epsilon(events[:1], DELTA, "add_remove")
    compute_epsilon(events[::-1], DELTA, "add_remove")
    assert len(built) == 5
    assert compute_epsilon(events, DELTA, "add_remove") == first and len(built) == 5
