"""Helpers for the end-to-end pipeline tests: an independent accountant, report scans.

Tiny run settings and the shared runs are in tests/tdpdm_test_support.py."""

from __future__ import annotations

from typing import Any

from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld import pld_privacy_accountant


def pld_add_remove(events: list[dict[str, Any]], delta: float) -> float:
    """dp_accounting PLD (add/remove) of report events, built here from the JSON fields."""
    built = []
    for e in events:
        gaussian = dp_event.GaussianDpEvent(noise_multiplier=e["noise_multiplier"])
        if e["kind"] == "poisson_gaussian":
            step = dp_event.PoissonSampledDpEvent(
                sampling_probability=e["sampling_rate"], event=gaussian
            )
            built.append(dp_event.SelfComposedDpEvent(event=step, count=e["steps"]))
        else:
            built.append(dp_event.SelfComposedDpEvent(event=gaussian, count=e.get("count", 1)))
    accountant = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    accountant.compose(dp_event.ComposedDpEvent(events=built))
    return float(accountant.get_epsilon(delta))


def keys_containing(tree: Any, fragment: str, path: str = "") -> list[str]:
    """Dotted paths of every mapping key (at any depth) whose name contains `fragment`."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if fragment in str(key).lower():
                found.append(where)
            found += keys_containing(value, fragment, where)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found += keys_containing(value, fragment, f"{path}[{i}]")
    return found


def int_values(tree: Any) -> list[int]:
    """Every integer value (not bool) anywhere in a JSON tree."""
    if isinstance(tree, dict):
        return [v for value in tree.values() for v in int_values(value)]
    if isinstance(tree, list):
        return [v for value in tree for v in int_values(value)]
    return [tree] if isinstance(tree, int) and not isinstance(tree, bool) else []
