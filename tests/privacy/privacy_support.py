"""Helpers for the privacy tests: an independent PLD accountant for
add/remove, and an independent replace-one reference built from numpy and scipy only.

The dp_accounting events here are built directly from `dp_accounting.dp_event`, never through
tdpdm's own conversion, so that the cross-checks compare two independent paths.
"""

from __future__ import annotations

import math

import numpy as np
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld import pld_privacy_accountant
from scipy import optimize, special

DELTA = 1e-5


def dpsgd_dp_event(sigma: float, q: float, steps: int) -> dp_event.DpEvent:
    """`steps` Poisson-subsampled Gaussian steps, as dp_accounting spells them."""
    return dp_event.SelfComposedDpEvent(
        event=dp_event.PoissonSampledDpEvent(
            sampling_probability=q, event=dp_event.GaussianDpEvent(noise_multiplier=sigma)
        ),
        count=steps,
    )


def gaussian_dp_event(sigma: float, count: int = 1) -> dp_event.DpEvent:
    return dp_event.SelfComposedDpEvent(
        event=dp_event.GaussianDpEvent(noise_multiplier=sigma), count=count
    )


def pld_reference(
    events: list[dp_event.DpEvent], delta: float, relation: NeighboringRelation
) -> float:
    """Epsilon of the composition of `events` from dp_accounting's PLD accountant."""
    accountant = pld_privacy_accountant.PLDAccountant(neighboring_relation=relation)
    accountant.compose(dp_event.ComposedDpEvent(events=list(events)))
    return float(accountant.get_epsilon(delta))


# -- an independent replace-one reference (numpy and scipy only) ------------------------------
#
# The product accounts replace-one with dp_accounting's PLD accountant, so the cross-checks may
# not use that accountant for replace-one. What follows derives the privacy loss from the
# mechanism itself and composes it with its own FFT.
#
# The dominating pair. Under replace-one with Poisson sampling at rate q, one record's clipped
# vector g (norm <= C) is replaced by g' (norm <= C); everything else is common to both data sets
# and the noise has std sigma * C. In units of C the worst case is g = e, g' = -e (|g - g'| = 2),
# and projected onto e the output is distributed as
#     P = (1 - q) N(0, sigma^2) + q N(+1, sigma^2)  versus
#     Q = (1 - q) N(0, sigma^2) + q N(-1, sigma^2).
# This is the pair of Koskela, Jalko & Honkela 2020 (sec. 5.2, "substitute" relation), of Zhu,
# Dong & Wang 2022, and of dp_accounting's `AdditiveNoisePrivacyLoss` docstring for REPLACE
# (mu_upper = q mu(x + s) + (1 - q) mu(x), mu_lower = q mu(x - s) + (1 - q) mu(x), s = 1). At
# q = 1 it is N(1) vs N(-1): the Gaussian mechanism with sensitivity 2C, mu = 2 / sigma. The pair
# is symmetric (x -> -x swaps P and Q), so one direction covers both.
#
# delta(eps) = E_P[(1 - exp(eps - L))_+] with L = log(P/Q)(X), X ~ P, and L summed over the
# composed steps (independent draws).

Mechanism = tuple[float, float, int]
"""(noise multiplier, Poisson sampling rate, count); rate 1.0 is a plain Gaussian release."""

REFERENCE_STEP = 1e-4
_X_INTERVALS = 200_000
_TAIL_SDS = 14.0  # x beyond 1 + 14 sigma: P-mass < 1e-44
_WRAP_MASS = 1e-15  # Chernoff bound on the mass the circular FFT may wrap around, per tail


def gaussian_exact_epsilon(mu: float, delta: float) -> float:
    """Epsilon of a Gaussian privacy loss with parameter mu, exactly (Balle & Wang 2018):
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), inverted by bisection."""

    def excess(eps: float) -> float:
        tail = math.exp(eps + special.log_ndtr(-eps / mu - mu / 2))
        return float(special.ndtr(-eps / mu + mu / 2) - tail - delta)

    if excess(0.0) <= 0.0:
        return 0.0
    return float(optimize.brentq(excess, 0.0, 10.0 + mu * mu + 10.0 * mu, xtol=1e-12))


def _loss_pmf(sigma: float, q: float, step: float) -> tuple[int, np.ndarray, float]:
    """One step's privacy loss on the grid step * (j0 + j): (j0, pmf, mass at infinite loss).

    The P-mass of each of many small x intervals is exact (CDF differences); it is split between
    the two grid points around the loss at the interval's midpoint so that the mean is kept
    (error O(step^2) per step, removed by the extrapolation in `replace_one_reference_epsilon`).
    """
    reach = 1.0 + _TAIL_SDS * sigma
    edges = np.linspace(-reach, reach, _X_INTERVALS + 1)
    z0, z1 = edges / sigma, (edges - 1.0) / sigma
    cdf = (1.0 - q) * special.ndtr(z0) + q * special.ndtr(z1)
    sf = (1.0 - q) * special.ndtr(-z0) + q * special.ndtr(-z1)
    mass = np.where(edges[1:] <= 0.5, np.diff(cdf), -np.diff(sf))  # the accurate side of each
    x = 0.5 * (edges[1:] + edges[:-1])
    if q < 1.0:
        common = math.log1p(-q) - x * x / (2 * sigma**2)
        moved = math.log(q) - (x * x + 1.0) / (2 * sigma**2)
        shift = x / sigma**2
        loss = np.logaddexp(common, moved + shift) - np.logaddexp(common, moved - shift)
    else:
        loss = 2.0 * x / sigma**2
    scaled = loss / step
    floor = np.floor(scaled)
    frac = scaled - floor
    j0 = int(floor.min())
    index = (floor - j0).astype(np.int64)
    size = int(index.max()) + 2
    pmf = np.bincount(index, mass * (1.0 - frac), size) + np.bincount(index + 1, mass * frac, size)
    # Above the grid the loss is huge: count it as infinite. Below, it is dropped (< 1e-44).
    return j0, pmf, float(sf[-1])


def _epsilon_on_grid(mechanisms: list[Mechanism], delta: float, step: float) -> float:
    parts = []
    offset, centre, log_finite = 0, 0.0, 0.0
    for sigma, q, count in mechanisms:
        if count == 0:
            continue
        j0, pmf, infinite = _loss_pmf(sigma, q, step)
        mean = float(np.dot(pmf, np.arange(pmf.size))) / float(pmf.sum())
        parts.append((pmf, mean, count))
        offset += count * j0
        centre += count * mean
        log_finite += count * math.log1p(-infinite)
    if not parts:
        return 0.0
    # Half-width of the circular grid: by Chernoff, P(|sum - centre| > half) < _WRAP_MASS.
    half = 0.0
    for sign in (1.0, -1.0):
        best = math.inf
        for lam in (0.03, 0.1, 0.3, 1.0, 3.0):
            t = lam * step  # per grid index
            log_mgf = sum(
                n * float(special.logsumexp(sign * t * (np.arange(p.size) - m), b=p))
                for p, m, n in parts
            )
            best = min(best, (log_mgf - math.log(_WRAP_MASS)) / t)
        half = max(half, best)
    size = 1 << math.ceil(math.log2(2.0 * half + 2.0))
    assert size <= 1 << 24, f"reference grid of {size} points: regime too wide"
    spectrum = np.ones(size // 2 + 1, dtype=complex)
    for pmf, _, count in parts:
        folded = np.bincount(np.arange(pmf.size) % size, pmf, size)
        spectrum *= np.fft.rfft(folded) ** count
    composed = np.maximum(np.fft.irfft(spectrum, size), 0.0)
    start = round(centre) - size // 2
    order = np.roll(np.arange(size), -(start % size))  # residues in increasing order of loss
    loss = (offset + start + np.arange(size)) * step
    mass = composed[order]
    with np.errstate(divide="ignore"):
        q_mass = np.exp(np.log(mass) - loss)  # Q-mass of each loss value: P-mass * e^-loss
    # delta(eps) = P(L > eps) - e^eps Q(L > eps): suffix sums, added from the small end.
    p_above = np.cumsum(mass[::-1])[::-1]
    q_above = np.cumsum(q_mass[::-1])[::-1]
    infinite = -math.expm1(log_finite)

    def excess(eps: float) -> float:
        k = int(np.searchsorted(loss, eps, side="right"))
        if k == size:
            return infinite - delta
        return float(p_above[k] - math.exp(eps) * q_above[k]) + infinite - delta

    if excess(0.0) <= 0.0:
        return 0.0
    return float(optimize.brentq(excess, 0.0, float(loss[-1]), xtol=1e-10))


def replace_one_reference_epsilon(mechanisms: list[Mechanism], delta: float) -> float:
    """Epsilon at `delta` of the composed `mechanisms` under replace-one adjacency.

    Richardson extrapolation over grid steps h and 2h cancels the O(h^2) discretisation error:
    in development, (1e-4, 2e-4) and (2.5e-5, 5e-5) agreed within 1e-7 over the test grid, and at
    q = 1 the result matched the closed form within 2e-8.
    """
    fine = _epsilon_on_grid(mechanisms, delta, REFERENCE_STEP)
    coarse = _epsilon_on_grid(mechanisms, delta, 2 * REFERENCE_STEP)
    return max((4.0 * fine - coarse) / 3.0, 0.0)


REFERENCE_ERROR = 1e-5
"""How far `replace_one_reference_epsilon` may sit from the true epsilon: measured <= 1e-7 (see
its docstring), so 1e-5 is a 100x margin, and still far below any modelling error."""
REPLACE_ONE_SLACK_ABS = 5e-4
REPLACE_ONE_SLACK_REL = 1e-3
"""How far above the true epsilon the product's replace-one upper bound may sit. Measured over the
grid of test_privacy_crosscheck_grid.py: at most 9e-5 (0.09 %), the discretisation error of
dp_accounting's connect-the-dots PLD at interval 1e-4. 5e-4 + 0.1 % leaves >= 5x headroom, yet
flags the coarse calibration interval 1e-3 where it is loose (+0.008 at sigma 2, q 0.001, 1000
steps), an optimistic (lower) estimate (-0.05 at 1000 steps) and every modelling error tried
(sensitivity C instead of 2C, add/remove pair, doubled noise): those move epsilon by 20-100 %."""


def assert_replace_one_bound(ours: float, reference: float, label: str) -> None:
    """`ours` is a valid (>= true) and tight upper bound given the independent `reference`."""
    assert math.isfinite(ours), label
    assert ours >= reference - REFERENCE_ERROR, (
        f"{label}: {ours} is below the true replace-one epsilon {reference}: not an upper bound"
    )
    slack = REPLACE_ONE_SLACK_ABS + REPLACE_ONE_SLACK_REL * reference
    assert ours <= reference + slack, (
        f"{label}: {ours} exceeds the true replace-one epsilon {reference} by more than {slack}"
    )
