"""Noise calibration: the smallest noise multiplier whose epsilon upper bound meets a target.

Root-finding is `dp_accounting.mechanism_calibration.calibrate_dp_mechanism` run against the
project's own accountant (PRV upper bound, or pessimistic PLD under replace-one), so the
returned noise never gives an upper bound above the target. PRV is slow and fragile far from the
answer, so the search runs in three passes: a coarse PLD pass finds a bracket, PRV with a wider
error band (its upper bound is looser, so still safe) finds the root inside it, and the reported
accountant at full precision confirms it. Every pass asks memoised accountants
(`accountant.MemoAccountant`): the passes and the root finder meet the same noise again (a
bracket end, the last probe), and a repeat costs a lookup instead of a PRV run. Nothing here
reads data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dp_accounting import mechanism_calibration
from dp_accounting.pld import pld_privacy_accountant

from tdpdm.privacy import calibration_cache
from tdpdm.privacy.accountant import MemoAccountant, compute_epsilon, memo_accountant
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import Event, to_dp_event

MIN_NOISE = 0.3
"""Below this, DP-SGD at useful epsilons is not a regime anyone runs."""
MAX_NOISE = 500.0
SEARCH_EPS_ERROR = 0.05
"""PRV error band during the search; the final check uses the reporting precision."""
COARSE_PLD_INTERVAL = 1e-2
"""PLD grid of the bracketing pass."""


class ImpossibleBudgetError(ValueError):
    """The target epsilon cannot be met with the mechanisms asked for."""


def calibrate_noise(
    make_events: Callable[[float], Sequence[Event]],
    target_epsilon: float,
    delta: float,
    adjacency: Adjacency | str,
    fixed_events: Sequence[Event] = (),
    rel_tol: float = 2e-3,
) -> float:
    """Noise multiplier sigma for `make_events(sigma)` so that, composed with `fixed_events`,
    the reported upper bound at `delta` is at most `target_epsilon`.

    Raises ImpossibleBudgetError when the target is out of reach.
    """
    adjacency = Adjacency.parse(adjacency)
    if not (target_epsilon > 0):
        raise ImpossibleBudgetError(f"target epsilon must be positive, got {target_epsilon}")
    if not (0 < delta < 1):
        raise ImpossibleBudgetError(f"delta must be in (0, 1), got {delta}")

    def events_at(sigma: float) -> list[Event]:
        return [*fixed_events, *make_events(sigma)]

    def reported_epsilon(sigma: float) -> float:
        return compute_epsilon(events_at(sigma), delta, adjacency).epsilon

    if fixed_events and compute_epsilon(list(fixed_events), delta, adjacency).epsilon >= (
        target_epsilon
    ):
        raise ImpossibleBudgetError(
            f"the mechanisms already planned spend the whole target epsilon {target_epsilon}"
        )

    def search(make_fresh, low: float, high: float, tol: float) -> float:
        return mechanism_calibration.calibrate_dp_mechanism(
            make_fresh_accountant=make_fresh,
            make_event_from_param=lambda s: to_dp_event(events_at(s)),
            target_epsilon=target_epsilon,
            target_delta=delta,
            bracket_interval=mechanism_calibration.ExplicitBracketInterval(low, high),
            tol=tol,
        )

    def coarse_accountant() -> MemoAccountant:
        # Pessimistic PLD on a coarse grid: fast, robust at any noise, and close enough to
        # bracket the root for the reporting accountant.
        relation = adjacency.to_dp_accounting()
        return MemoAccountant(
            ("coarse-pld", relation, COARSE_PLD_INTERVAL),
            lambda: pld_privacy_accountant.PLDAccountant(
                neighboring_relation=relation,
                value_discretization_interval=COARSE_PLD_INTERVAL,
            ),
            relation,
        )

    def coarse(sigma: float) -> float:
        return coarse_accountant().compose(to_dp_event(events_at(sigma))).get_epsilon(delta)

    key = calibration_cache.cache_key(
        fixed_events,
        [make_events(1.0), make_events(2.0)],
        target_epsilon,
        delta,
        adjacency.value,
        rel_tol,
    )
    cached = calibration_cache.lookup(key)
    if cached is not None and reported_epsilon(cached) <= target_epsilon:
        return cached  # re-checked above with the reporting accountant: never trusted blindly

    low, high = _geometric_bracket(coarse, target_epsilon, delta)
    # The least noise may already meet the target (a large epsilon): no root to bracket then.
    if coarse(low) <= target_epsilon:
        guess = low
    else:
        guess = search(coarse_accountant, low, high, 1e-2 * low)
    # The fine root lies close to the coarse one; widen only if it does not.
    low, high = max(MIN_NOISE, guess * 0.9), guess * 1.05
    fine = lambda: memo_accountant(adjacency, SEARCH_EPS_ERROR, 1e-3)  # noqa: E731
    while fine().compose(to_dp_event(events_at(high))).get_epsilon(delta) > target_epsilon:
        low, high = high, high * 1.25
        if high > MAX_NOISE:
            raise ImpossibleBudgetError(_out_of_reach(target_epsilon, delta))
    if fine().compose(to_dp_event(events_at(low))).get_epsilon(delta) <= target_epsilon:
        sigma = low
    else:
        sigma = search(fine, low, high, rel_tol * low)
    # Final pass at the reporting precision: its tighter upper bound usually lets the noise come
    # down a little (a few percent at small targets), and it is the figure that gets reported.
    # The search band's wider error can put its root more than 10 % above the reported one
    # (small targets): step down until the reported bound overshoots, or noise is wasted.
    low, high = max(MIN_NOISE, sigma * 0.9), sigma
    if reported_epsilon(high) <= target_epsilon:
        while low > MIN_NOISE and reported_epsilon(low) <= target_epsilon:
            low, high = max(MIN_NOISE, low * 0.9), low
        if reported_epsilon(low) <= target_epsilon:
            sigma = low
        else:
            sigma = search(lambda: memo_accountant(adjacency), low, high, rel_tol * low)
    while reported_epsilon(sigma) > target_epsilon:
        sigma *= 1 + rel_tol
    calibration_cache.store(key, sigma)
    return float(sigma)


def _geometric_bracket(
    epsilon_at: Callable[[float], float], target: float, delta: float
) -> tuple[float, float]:
    """[low, high] with epsilon(low) > target >= epsilon(high), stepping by 2 from sigma = 1."""
    sigma = 1.0
    if epsilon_at(sigma) > target:
        while epsilon_at(sigma) > target:
            sigma *= 2
            if sigma > MAX_NOISE:
                raise ImpossibleBudgetError(_out_of_reach(target, delta))
        return sigma / 2, sigma
    while sigma / 2 >= MIN_NOISE and epsilon_at(sigma / 2) <= target:
        sigma /= 2
    return max(MIN_NOISE, sigma / 2), sigma


def _out_of_reach(target: float, delta: float) -> str:
    return (
        f"epsilon {target} at delta {delta} is out of reach even with noise multiplier "
        f"{MAX_NOISE}: raise epsilon or delta, or plan fewer steps"
    )
