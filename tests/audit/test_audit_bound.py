"""The one-run epsilon lower bound: against brute-force binomial sums, limits, and validity."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from tdpdm.privacy.audit_bound import (
    audit_lower_bound,
    count_correct,
    default_guess_grid,
    epsilon_lower_bound,
    max_lower_bound,
    p_value,
)


def brute_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 5.2's bound written out with exact binomial sums (no scipy)."""
    q = Fraction(1) / (1 + Fraction(math.exp(-eps)))
    pmf = [math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(r + 1)]
    tail = sum(pmf[v:])
    alpha = max((sum(pmf[v - i : v]) / i for i in range(1, v + 1)), default=Fraction(0))
    return min(1.0, float(tail + 2 * m * Fraction(delta) * alpha))


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (100, 20, 15, 0.5, 0.0),
        (100, 20, 15, 0.5, 1e-3),
        (1000, 60, 55, 2.0, 1e-5),
        (50, 50, 50, 3.0, 1e-4),
        (200, 40, 0, 1.0, 1e-5),
        (10, 4, 3, 0.0, 0.01),
    ],
)
def test_p_value_matches_exact_binomial_sums(m, r, v, eps, delta):
    assert p_value(m, r, v, eps, delta) == pytest.approx(brute_p_value(m, r, v, eps, delta), 1e-9)


def test_p_value_grows_with_epsilon_and_delta():
    eps = np.linspace(0, 6, 25)
    p = [p_value(500, 100, 90, e, 1e-5) for e in eps]
    assert np.all(np.diff(p) >= 0)
    assert p_value(500, 100, 90, 2.0, 1e-3) > p_value(500, 100, 90, 2.0, 0.0)


def test_lower_bound_sits_on_the_rejection_boundary():
    beta = 0.05
    eps = epsilon_lower_bound(1000, 100, 95, 1e-5, beta)
    assert eps > 0
    assert p_value(1000, 100, 95, eps, 1e-5) < beta
    assert p_value(1000, 100, 95, eps + 1e-6, 1e-5) >= beta


def test_all_correct_pure_dp_has_a_closed_form():
    # delta = 0, all r correct: p = q^r = beta  =>  eps = log(q / (1 - q)), q = beta^(1/r)
    r, beta = 50, 0.05
    q = beta ** (1 / r)
    assert epsilon_lower_bound(r, r, r, 0.0, beta) == pytest.approx(math.log(q / (1 - q)), 1e-6)


def test_bound_never_exceeds_what_the_guesses_allow():
    for m, r in ((100, 20), (500, 100), (1000, 1000)):
        top = max_lower_bound(m, r, 1e-5, 0.05)
        assert 0 < top < math.log(r)  # r guesses cannot certify more than about ln(r / 3)
        for v in range(0, r + 1, max(1, r // 10)):
            assert epsilon_lower_bound(m, r, v, 1e-5, 0.05) <= top + 1e-9


@pytest.mark.parametrize("v_fraction", [0.0, 0.3, 0.5])
def test_chance_level_or_wrong_guesses_certify_nothing(v_fraction):
    r = 200
    assert epsilon_lower_bound(1000, r, int(v_fraction * r), 1e-5, 0.05) == 0.0


def test_count_correct_guesses_top_in_and_bottom_out():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5])
    included = np.array([True, False, False, False, True])
    # top 2 -> canaries 0 (in: right) and 2 (out: wrong); bottom 2 -> 1 and 3 (out: both right)
    assert count_correct(scores, included, 2, 2) == (4, 3)
    assert count_correct(scores, included, 0, 0) == (0, 0)
    with pytest.raises(ValueError, match="do not fit"):
        count_correct(scores, included, 3, 3)


def test_perfect_scores_reach_the_maximum_and_random_scores_stay_near_zero():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    perfect = audit_lower_bound(included.astype(float), included, delta=1e-5)
    grid = default_guess_grid(1000, 1e-5, 0.95)
    beta = 0.05 / len(grid)
    n_in = int(included.sum())
    attainable = max(
        max_lower_bound(1000, kp + km, 1e-5, beta)
        for kp, km in grid
        if kp <= n_in and km <= 1000 - n_in  # guesses that perfect scores get all right
    )
    assert perfect.epsilon_lower_bound == pytest.approx(attainable)
    assert perfect.best.correct == perfect.best.guesses
    inverted = audit_lower_bound(-included.astype(float), included, delta=1e-5)
    assert inverted.epsilon_lower_bound == 0.0
    noise = audit_lower_bound(rng.normal(size=1000), included, delta=1e-5)
    assert noise.epsilon_lower_bound < 0.3


def test_bound_is_valid_for_randomized_response():
    """Guesses right with probability e^eps/(1+e^eps), i.e. an exactly eps-DP mechanism: the
    95 % lower bound may exceed eps in at most about 5 % of repetitions."""
    eps, m, trials = 1.0, 400, 200
    rng = np.random.default_rng(1)
    bounds = []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        right = rng.random(m) < 1 / (1 + math.exp(-eps))
        guess_in = np.where(right, included, ~included)
        # scores that put guessed-in canaries on top, in random order within each group
        scores = guess_in + 0.5 * rng.random(m)
        bound = audit_lower_bound(scores, included, delta=0.0, confidence=0.95, grid=[(200, 200)])
        bounds.append(bound.epsilon_lower_bound)
    above = sum(b > eps for b in bounds)
    assert above <= 0.05 * trials + 3 * math.sqrt(0.05 * 0.95 * trials)
    assert np.median(bounds) > 0.5 * eps  # and it is not vacuous: it gets close to eps


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="confidence"):
        audit_lower_bound(np.zeros(10), np.zeros(10, bool), delta=1e-5, confidence=1.5)
    with pytest.raises(ValueError, match="NaN"):
        audit_lower_bound(np.full(10, np.nan), np.zeros(10, bool), delta=1e-5)
    with pytest.raises(ValueError, match="v <= r <= m"):
        p_value(10, 20, 5, 1.0, 0.0)


def test_default_grid_keeps_only_guess_sizes_that_can_certify_something():
    for m in (10, 100, 1000):
        grid = default_guess_grid(m, 1e-5, 0.95)
        beta = 0.05 / len(grid)
        assert grid and all(kp + km <= m for kp, km in grid)
        assert all(max_lower_bound(m, kp + km, 1e-5, beta) > 0 for kp, km in grid[:-1])
    assert (2, 2) not in default_guess_grid(100, 1e-5, 0.95)  # 4 right guesses prove nothing
    assert len(default_guess_grid(1000, 1e-5, 0.95)) == 5
