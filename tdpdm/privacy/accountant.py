"""Composing privacy events into one (epsilon, delta) guarantee.

Add/remove: the Privacy Random Variable accountant (`prv_accountant`), reporting its *upper*
bound. Replace-one: `dp_accounting`'s PLD accountant with the REPLACE_ONE relation, whose
pessimistic discretisation is itself an upper bound (prv-accountant's mechanisms are add/remove
only). Both are wrapped as `dp_accounting.PrivacyAccountant`s so that the same calibration
routine and cross-checks work with either.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.privacy_accountant import PrivacyAccountant
from prv_accountant import GaussianMechanism, PoissonSubsampledGaussianMechanism, PRVAccountant
from prv_accountant.accountant import compute_safe_domain_size

from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import Event, is_empty, to_dp_event

PRV_EPS_ERROR = 0.01
"""Width of PRV's epsilon error band; the reported upper bound already includes it."""


@dataclass(frozen=True)
class EpsilonBound:
    """An epsilon upper bound at `delta`, with where it came from."""

    epsilon: float
    delta: float
    adjacency: Adjacency
    accountant: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "adjacency": self.adjacency.value,
            "accountant": self.accountant,
        }


class PRVDpAccountant(PrivacyAccountant):
    """`prv_accountant.PRVAccountant` behind the `dp_accounting` interface (add/remove only).

    It understands Gaussian and Poisson-subsampled Gaussian events and their (self-)compositions;
    `get_epsilon` returns PRV's upper bound, so calibrating against it never overshoots.
    """

    def __init__(self, eps_error: float = PRV_EPS_ERROR) -> None:
        super().__init__(NeighboringRelation.ADD_OR_REMOVE_ONE)
        self._eps_error = eps_error
        self._counts: Counter[tuple[str, float, float]] = Counter()
        self.fell_back = False

    def _maybe_compose(
        self, event: dp_event.DpEvent, count: int, do_compose: bool
    ) -> PrivacyAccountant.CompositionErrorDetails | None:
        if isinstance(event, dp_event.NoOpDpEvent) or count == 0:
            return None
        if isinstance(event, dp_event.SelfComposedDpEvent):
            return self._maybe_compose(event.event, event.count * count, do_compose)
        if isinstance(event, dp_event.ComposedDpEvent):
            for sub in event.events:
                error = self._maybe_compose(sub, count, do_compose)
                if error is not None:
                    return error
            return None
        if isinstance(event, dp_event.GaussianDpEvent):
            key = ("gaussian", float(event.noise_multiplier), 1.0)
        elif isinstance(event, dp_event.PoissonSampledDpEvent) and isinstance(
            event.event, dp_event.GaussianDpEvent
        ):
            key = (
                "poisson_gaussian",
                float(event.event.noise_multiplier),
                float(event.sampling_probability),
            )
        else:
            return PrivacyAccountant.CompositionErrorDetails(
                invalid_event=event, error_message="PRV adapter: unsupported event"
            )
        if do_compose:
            self._counts[key] += count
        return None

    def get_epsilon(self, target_delta: float) -> float:
        """PRV's upper bound; where PRV cannot discretise the regime (huge privacy loss), the
        pessimistic PLD bound, which is also an upper bound (`fell_back` says so)."""
        try:
            return self.epsilon_bounds(target_delta)[2]
        except (RuntimeError, FloatingPointError, OverflowError, ValueError):
            self.fell_back = True
            pld = pld_privacy_accountant.PLDAccountant(
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE
            )
            pld.compose(self.ledger)
            return float(pld.get_epsilon(target_delta))

    def epsilon_bounds(self, target_delta: float) -> tuple[float, float, float]:
        """(lower, estimate, upper) epsilon at `target_delta`."""
        if not self._counts:
            return (0.0, 0.0, 0.0)
        prvs, counts = [], []
        for (kind, sigma, rate), n in self._counts.items():
            if kind == "gaussian" or rate >= 1.0:
                prvs.append(GaussianMechanism(noise_multiplier=sigma))
            else:
                prvs.append(
                    PoissonSubsampledGaussianMechanism(
                        sampling_probability=rate, noise_multiplier=sigma
                    )
                )
            counts.append(int(n))
        _check_prv_grid(prvs, counts, self._eps_error, target_delta * 1e-3)
        accountant = PRVAccountant(
            prvs=prvs,
            max_self_compositions=counts,
            eps_error=self._eps_error,
            delta_error=target_delta * 1e-3,
        )
        low, est, up = accountant.compute_epsilon(delta=target_delta, num_self_compositions=counts)
        return (float(low), float(est), float(max(up, 0.0)))


PRV_MAX_GRID_POINTS = 3_000_000
"""PRV discretises the privacy loss on a grid; past this it would exhaust memory."""


def _check_prv_grid(
    prvs: list[Any], counts: list[int], eps_error: float, delta_error: float
) -> None:
    """Refuse (RuntimeError) regimes whose PRV grid would not fit in memory, before allocating."""
    domain = compute_safe_domain_size(prvs, counts, eps_error=eps_error, delta_error=delta_error)
    total = sum(counts)
    mesh = eps_error / math.sqrt(total / 2 * math.log(12 / delta_error))
    if not math.isfinite(domain) or 2 * domain / mesh > PRV_MAX_GRID_POINTS:
        raise RuntimeError(f"PRV grid of {2 * domain / mesh:.3g} points is too large")


def make_accountant(
    adjacency: Adjacency, eps_error: float = PRV_EPS_ERROR, pld_interval: float = 1e-4
) -> PrivacyAccountant:
    """The project's primary accountant for an adjacency (fresh, empty).

    Coarser `eps_error` / `pld_interval` give looser (still upper) bounds, faster: calibration
    searches with them and the final figure is recomputed at the default precision.
    """
    if adjacency is Adjacency.ADD_REMOVE:
        return PRVDpAccountant(eps_error=eps_error)
    return pld_privacy_accountant.PLDAccountant(
        neighboring_relation=NeighboringRelation.REPLACE_ONE,
        value_discretization_interval=pld_interval,
    )


def accountant_name(adjacency: Adjacency) -> str:
    if adjacency is Adjacency.ADD_REMOVE:
        return f"prv-accountant PRV, upper bound (eps_error {PRV_EPS_ERROR})"
    return "dp-accounting PLD, replace-one, pessimistic (upper bound)"


def compute_epsilon(
    events: Sequence[Event], delta: float, adjacency: Adjacency | str
) -> EpsilonBound:
    """Upper bound on epsilon at `delta` for all `events` composed under `adjacency`.

    Memoised (`memo_accountant`): the ledger, calibration and the report ask for the same
    composition many times over, and one PRV/PLD evaluation costs about a second.
    """
    adjacency = Adjacency.parse(adjacency)
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    live = [e for e in events if not is_empty(e)]
    if not live:
        return EpsilonBound(0.0, delta, adjacency, accountant_name(adjacency))
    _check_composition_count(live)
    name = accountant_name(adjacency)
    accountant = memo_accountant(adjacency)
    accountant.compose(to_dp_event(live))
    epsilon = float(accountant.get_epsilon(delta))
    if accountant.fell_back:
        name = "dp-accounting PLD, add/remove, pessimistic (upper bound; PRV fallback)"
    if math.isnan(epsilon):
        raise ArithmeticError(f"accountant returned NaN for {live}")
    return EpsilonBound(epsilon, delta, adjacency, name)


def memo_accountant(
    adjacency: Adjacency, eps_error: float = PRV_EPS_ERROR, pld_interval: float = 1e-4
) -> MemoAccountant:
    """`make_accountant(adjacency, eps_error, pld_interval)`, memoised."""
    return MemoAccountant(
        ("primary", adjacency.value, eps_error, pld_interval),
        lambda: make_accountant(adjacency, eps_error, pld_interval),
        adjacency.to_dp_accounting(),
    )


class MemoAccountant(PrivacyAccountant):
    """A fresh accountant from `make` whose epsilons are remembered across instances.

    It keeps what it is asked to compose; `get_epsilon` looks the answer up by `kind` (which
    accountant, at which precision), those events in order (their exact `repr`) and delta, and
    only on a miss composes them, in the same order, into `make()` and asks it. Accountants are
    deterministic, so a hit is the very figure a fresh accountant gives. `kind` must name
    everything that `make` depends on.
    """

    def __init__(
        self, kind: Hashable, make: Callable[[], PrivacyAccountant], relation: NeighboringRelation
    ) -> None:
        super().__init__(relation)
        self._kind, self._make = kind, make
        self._composed: list[tuple[dp_event.DpEvent, int]] = []
        self.fell_back = False

    def _maybe_compose(
        self, event: dp_event.DpEvent, count: int, do_compose: bool
    ) -> PrivacyAccountant.CompositionErrorDetails | None:
        # Support is the inner accountant's to judge: an event it refuses is never in the memo,
        # so `get_epsilon` always reaches `make().compose`, which raises UnsupportedEventError.
        if do_compose:
            self._composed.append((event, count))
        return None

    def get_epsilon(self, target_delta: float) -> float:
        key = (self._kind, repr(self._composed), float(target_delta))
        with _MEMO_LOCK:
            hit = _MEMO.get(key)
            if hit is not None:
                _MEMO.move_to_end(key)
        if hit is None:
            inner = self._make()
            for event, count in self._composed:
                inner.compose(event, count)
            hit = (float(inner.get_epsilon(target_delta)), bool(getattr(inner, "fell_back", False)))
            with _MEMO_LOCK:
                _MEMO[key] = hit
                while len(_MEMO) > MEMO_SIZE:
                    _MEMO.popitem(last=False)
        self.fell_back = hit[1]
        return hit[0]


MEMO_SIZE = 1024
"""Epsilons remembered (least recently used dropped first); an entry is a few hundred bytes."""
_MEMO: OrderedDict[tuple[Hashable, str, float], tuple[float, bool]] = OrderedDict()
_MEMO_LOCK = threading.Lock()


def clear_epsilon_memo() -> None:
    """Forget every memoised epsilon (for tests that count accountant constructions)."""
    with _MEMO_LOCK:
        _MEMO.clear()


MAX_COMPOSITIONS = 2_000_000
"""More self-compositions than any real job runs; past it PLD's FFTs can exhaust memory."""


def _check_composition_count(events: Sequence[Event]) -> None:
    total = sum(e.steps if e.kind == "poisson_gaussian" else e.count for e in events)
    if total > MAX_COMPOSITIONS:
        raise ValueError(
            f"{total} composed mechanisms is beyond what tdpdm accounts (max {MAX_COMPOSITIONS})"
        )


def pld_epsilon(
    events: Sequence[Event], delta: float, adjacency: Adjacency | str, interval: float = 1e-4
) -> float:
    """Pessimistic PLD epsilon: fast and robust, used to bracket searches and as a cross-check."""
    relation = Adjacency.parse(adjacency).to_dp_accounting()
    accountant = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=relation, value_discretization_interval=interval
    )
    live = [e for e in events if not is_empty(e)]
    if not live:
        return 0.0
    _check_composition_count(live)
    accountant.compose(to_dp_event(live))
    return float(accountant.get_epsilon(delta))
