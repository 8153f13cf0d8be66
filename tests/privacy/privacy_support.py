"""Helpers for the privacy tests: the real data location and an independent PLD accountant.

The dp_accounting events here are built directly from `dp_accounting.dp_event`, never through
tdpdm's own conversion, so that the cross-checks compare two independent paths.
"""

from __future__ import annotations

import os
from pathlib import Path

from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld import pld_privacy_accountant

DELTA = 1e-5


def shared_datasets_root() -> Path:
    env = os.environ.get("TDPDM_SHARED_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


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
