"""Fixtures shared by every test directory.

Mechanism randomness (DP noise, sampling masks, release noise, score noise) comes from fresh OS
entropy in the product (`tdpdm.privacy.randomness`). Tests that need it repeatable replace the
entropy source *in this process* through the fixtures below, never through a product flag or a
config key: no such flag exists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from mechanism_keys import derived_key, seed_derived_key

from tdpdm.privacy import randomness


@pytest.fixture
def fixed_mechanism_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeatable mechanism keys: the k-th key drawn for a purpose is the same in every run of
    the test, and keys of different purposes or draws differ (mechanisms stay independent)."""
    drawn: Counter[str] = Counter()

    def entropy(purpose: str) -> int:
        drawn[purpose] += 1
        return derived_key(f"fixed/{purpose}/{drawn[purpose]}")

    monkeypatch.setattr(randomness, "_entropy", entropy)


@pytest.fixture
def seed_derived_mechanism_keys(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Install keys derived from a published seed (call the returned function with the seed):
    what the product did before issue 11. Only adversary tests use it, to show that a replay
    attacker then wins."""

    def install(seed: int) -> None:
        monkeypatch.setattr(randomness, "_entropy", lambda purpose: seed_derived_key(seed, purpose))

    return install
