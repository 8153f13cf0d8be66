"""Deterministic mechanism keys for tests (imported by tests/conftest.py and adversary tests)."""

from __future__ import annotations

import hashlib


def derived_key(label: str) -> int:
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:16], "big")


def seed_derived_key(seed: int, purpose: str) -> int:
    """The flaw of issue 11, for adversary tests only: a mechanism key that is a function of the
    published seed (and the mechanism's public purpose)."""
    return derived_key(f"seed/{seed}/{purpose}")
