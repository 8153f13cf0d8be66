"""Epsilon lower bounds from one training run (Steinke, Nasr & Jagielski 2023, arXiv 2305.08846).

The audit inserts m canaries, each independently in (S_i = +1) or out (S_i = -1) with
probability 1/2, trains once, and guesses S_i for the k+ highest and k- lowest membership
scores (abstaining on the rest). For an (eps, delta)-DP mechanism the number W of correct guesses
among the r = k+ + k- made is, up to a delta term, stochastically dominated by
Binomial(r, e^eps / (1 + e^eps)) (their Theorem 5.2, approximate-DP case):

    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m delta * max_{i=1..v} P[v-i <= Binomial(r, q) < v] / i

with q = 1 / (1 + e^-eps). The lower bound at confidence 1 - beta is the largest eps whose
p-value for the observed W is still below beta: any smaller claimed epsilon is refuted.

Choosing (k+, k-) after seeing the scores would invalidate the p-value, so the caller fixes a
small grid of choices in advance and pays for it with a union bound (beta / len(grid)).
Pure numerics: numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

MAX_EPSILON = 100.0
"""Search ceiling; a finite r can never certify more than about ln(r / ln(1/beta))."""


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] under the (epsilon, delta)-DP null hypothesis."""
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not (0 <= delta <= 1):
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if v == 0 or delta == 0:
        return min(1.0, tail)
    # P[v - i <= B < v] for i = 1..v: cumulative pmf going down from v - 1.
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float) -> float:
    """Largest epsilon rejected at level `beta` by v correct of r guesses (0 if none is)."""
    if not (0 < beta < 1):
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2.0 * hi
        if hi > MAX_EPSILON:
            return MAX_EPSILON
    for _ in range(60):  # p_value grows with epsilon: bisect on the boundary
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def max_lower_bound(m: int, r: int, delta: float, beta: float) -> float:
    """The most any audit with r guesses can certify: all r guesses correct."""
    return epsilon_lower_bound(m, r, r, delta, beta)


def default_guess_grid(
    m: int, delta: float = 0.0, confidence: float = 0.95
) -> list[tuple[int, int]]:
    """(k+, k-) pairs fixed before any score is seen: symmetric, from few confident guesses up
    to guessing every canary. Sizes too small to certify anything even when every guess is
    right are dropped, so they do not dilute the union bound. Depends on m, delta and the
    confidence only, never on the scores."""
    sizes = sorted({max(1, round(m * f)) for f in (0.025, 0.05, 0.1, 0.2, 0.5)})
    grid = [(k, min(k, m - k)) for k in sizes if 2 * k <= m or k == sizes[0]]
    beta = (1.0 - confidence) / len(grid)
    useful = [g for g in grid if max_lower_bound(m, sum(g), delta, beta) > 0]
    return useful or grid[-1:]


@dataclass(frozen=True)
class GuessOutcome:
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    epsilon_lower_bound: float


@dataclass(frozen=True)
class AuditBound:
    """The audit's verdict: the best bound over the fixed grid, each at level beta / len(grid)."""

    epsilon_lower_bound: float
    confidence: float
    delta: float
    canaries: int
    best: GuessOutcome
    grid: list[GuessOutcome]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_correct(
    scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int
) -> tuple[int, int]:
    """(guesses, correct) when guessing 'in' for the top k+ scores and 'out' for the bottom k-.

    Ties are broken by canary index, which does not depend on who was included."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if len(included) != m:
        raise ValueError(f"{m} scores but {len(included)} membership flags")
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ValueError(f"k+ = {k_plus} and k- = {k_minus} do not fit {m} canaries")
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:k_plus], order[m - k_minus :]
    correct = int(included[top].sum()) + int((~included[bottom]).sum())
    return k_plus + k_minus, correct


def audit_lower_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    grid: Sequence[tuple[int, int]] | None = None,
) -> AuditBound:
    """Epsilon lower bound at `confidence` from membership scores of m canaries.

    `included[i]` is S_i = +1; higher scores mean 'more likely in'. Every grid point is tested
    at level (1 - confidence) / len(grid), so the maximum over the grid holds at `confidence`.
    """
    if not (0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    m = len(scores)
    if m < 2:
        raise ValueError(f"an audit needs at least 2 canaries, got {m}")
    if not np.all(np.isfinite(np.asarray(scores, dtype=np.float64))):
        raise ValueError("membership scores contain NaN or inf")
    grid = list(grid) if grid is not None else default_guess_grid(m, delta, confidence)
    if not grid:
        raise ValueError("the guess grid is empty")
    beta = (1.0 - confidence) / len(grid)
    outcomes = []
    for k_plus, k_minus in grid:
        r, v = count_correct(scores, included, k_plus, k_minus)
        eps = epsilon_lower_bound(m, r, v, delta, beta) if r else 0.0
        outcomes.append(GuessOutcome(k_plus, k_minus, r, v, eps))
    best = max(outcomes, key=lambda o: o.epsilon_lower_bound)
    return AuditBound(best.epsilon_lower_bound, confidence, delta, m, best, outcomes)
