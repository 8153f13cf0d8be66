"""Noise calibration: the returned sigma meets the target, and not by a wide margin."""

from __future__ import annotations

import pytest
from privacy_support import DELTA

from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.calibration import ImpossibleBudgetError, calibrate_noise
from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent


def dpsgd(sigma: float) -> list[PoissonGaussianEvent]:
    return [PoissonGaussianEvent(sigma, 0.05, 200, "diffusion")]


FIXED = [PoissonGaussianEvent(6.0, 0.05, 10, "encoder")]  # about epsilon 0.1 / 0.17

CASES = [
    *[(t, a, False) for t in (1.0, 3.0, 10.0) for a in ("add_remove", "replace_one")],
    (1.0, "replace_one", True),
    (3.0, "add_remove", True),
    (3.0, "replace_one", True),
]


@pytest.mark.parametrize(
    "target, adjacency, with_fixed",
    CASES,
    ids=[f"{t:g}-{a}-{'after-fixed' if f else 'alone'}" for t, a, f in CASES],
)
def test_calibrated_noise_meets_target_tightly(
    target: float, adjacency: str, with_fixed: bool
) -> None:
    fixed = FIXED if with_fixed else []
    sigma = calibrate_noise(dpsgd, target, DELTA, adjacency, fixed_events=fixed)
    assert sigma > 0

    def epsilon(s: float) -> float:
        return compute_epsilon([*fixed, *dpsgd(s)], DELTA, adjacency).epsilon

    spent = epsilon(sigma)
    assert spent <= target
    if with_fixed:
        assert compute_epsilon(fixed, DELTA, adjacency).epsilon < spent
    # Tight: 3 % less noise would break the target.
    assert epsilon(0.97 * sigma) > target, (sigma, spent)


def test_calibration_with_a_gaussian_release_fixed() -> None:
    release = [GaussianEvent(8.0, 1, "latent_release")]
    sigma = calibrate_noise(dpsgd, 5.0, DELTA, "replace_one", fixed_events=release)
    assert compute_epsilon([*release, *dpsgd(sigma)], DELTA, "replace_one").epsilon <= 5.0
    # The fixed spend leaves less room: more noise than with the budget to itself.
    assert sigma > calibrate_noise(dpsgd, 5.0, DELTA, "replace_one")


def test_replace_one_needs_more_noise_than_add_remove() -> None:
    add_remove = calibrate_noise(dpsgd, 3.0, DELTA, "add_remove")
    replace_one = calibrate_noise(dpsgd, 3.0, DELTA, "replace_one")
    assert replace_one > add_remove * 1.2


def test_fixed_events_over_target_are_impossible() -> None:
    expensive = [PoissonGaussianEvent(0.8, 0.1, 100, "encoder")]  # about epsilon 11
    assert compute_epsilon(expensive, DELTA, "add_remove").epsilon > 5
    with pytest.raises(ImpossibleBudgetError, match="already planned"):
        calibrate_noise(dpsgd, 5.0, DELTA, "add_remove", fixed_events=expensive)


@pytest.mark.parametrize("target", [0.0, -1.0, float("nan")])
def test_non_positive_target_is_impossible(target: float) -> None:
    with pytest.raises(ImpossibleBudgetError, match="positive"):
        calibrate_noise(dpsgd, target, DELTA, "add_remove")


@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_bad_delta_is_impossible(delta: float) -> None:
    with pytest.raises(ImpossibleBudgetError, match="delta"):
        calibrate_noise(dpsgd, 1.0, delta, "add_remove")


def test_unreachable_target_is_impossible() -> None:
    """A full-batch mechanism run very often cannot reach a tiny epsilon below MAX_NOISE."""

    def many_full_batches(sigma: float) -> list[PoissonGaussianEvent]:
        return [PoissonGaussianEvent(sigma, 1.0, 10_000, "x")]

    with pytest.raises(ImpossibleBudgetError, match="out of reach"):
        calibrate_noise(many_full_batches, 0.01, DELTA, "replace_one")


def test_out_of_reach_message_names_the_delta() -> None:
    with pytest.raises(ImpossibleBudgetError) as info:
        calibrate_noise(lambda s: [GaussianEvent(s, 100, "x")], 0.01, DELTA, "replace_one")
    assert "None" not in str(info.value)
    assert "1e-05" in str(info.value)
