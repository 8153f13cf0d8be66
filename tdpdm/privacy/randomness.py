"""Secret mechanism randomness: fresh OS entropy, one key per mechanism, never from `--seed`.

A DP guarantee is a statement about the mechanism's *randomness*. If an observer can regenerate
it (e.g. from the published `--seed`), subtracting the noise undoes the mechanism and epsilon is
infinite. So everything the proof needs secret (Poisson sampling masks, DP-SGD noise, release
noise, noisy scores, per-record role draws) comes from a `MechanismKey`:

* a fresh 128-bit key from `secrets` (the OS CSPRNG) per mechanism, drawn where the mechanism
  is set up: stages, ranks and trials each get their own key or an independent child of one;
* generators are derived from it with NumPy's `SeedSequence` (the full 128 bits reach PCG64;
  torch's CPU/CUDA generators take a 64-bit seed derived from it, the most torch accepts);
* a key never appears in a repr, a log line, a report or a published file. Generator *states*
  (which are as good as the key) live only in custodian-private checkpoints.

`--seed` keeps governing what may be public: initial weights, the synthetic sampler and other
data-independent choices. Two runs with the same `--seed` therefore publish different outputs.

Tests that need repeatable noise (a resumed run equals an uninterrupted one, audit power) replace
`_entropy` in-process through a fixture (`tests/conftest.py`); there is deliberately no flag,
config key or environment variable that does so.
"""

from __future__ import annotations

import secrets
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

KEY_BITS = 128


def _entropy(purpose: str) -> int:
    """A fresh 128-bit key from the OS CSPRNG. `purpose` is unused here (tests' injected
    sources may use it to make per-mechanism keys repeatable)."""
    del purpose
    return secrets.randbits(KEY_BITS)


def _path_words(path: tuple[int | str, ...]) -> tuple[int, ...]:
    """Child labels as SeedSequence spawn-key words (strings by CRC32: labels are public)."""
    return tuple(p if isinstance(p, int) else zlib.crc32(p.encode()) for p in path)


@dataclass(frozen=True)
class MechanismKey:
    """The secret key of one mechanism. Pickles (Ray sends it to its workers in memory) but
    never prints: `repr` and `str` show only the purpose."""

    purpose: str
    _key: int = field(repr=False)
    _path: tuple[int, ...] = field(default=(), repr=False)

    @classmethod
    def fresh(cls, purpose: str) -> MechanismKey:
        """A new key from OS entropy: call once per mechanism, stage, rank group or trial."""
        return cls(purpose, int(_entropy(purpose)) % (1 << KEY_BITS))

    def child(self, *path: int | str) -> MechanismKey:
        """An independent key for a part of this mechanism (a rank, a sub-mechanism)."""
        return MechanismKey(self.purpose, self._key, self._path + _path_words(path))

    def _sequence(self) -> np.random.SeedSequence:
        return np.random.SeedSequence(entropy=self._key, spawn_key=self._path)

    def numpy(self) -> np.random.Generator:
        """A PCG64 generator seeded with the full key."""
        return np.random.Generator(np.random.PCG64(self._sequence()))

    def torch(self, device: str | torch.device = "cpu") -> torch.Generator:
        """A torch generator on `device` (64-bit seed derived from the key)."""
        seed = int(self._sequence().generate_state(1, dtype=np.uint64)[0])
        return torch.Generator(device=device).manual_seed(seed)

    def __str__(self) -> str:
        return f"MechanismKey({self.purpose!r}, secret)"

    __repr__ = __str__


def bernoulli_roles(key: MechanismKey, n: int, probability: float) -> np.ndarray:
    """Per-record independent Bernoulli(`probability`) draws, (n,) bool.

    A record's role (in a subset, in a held-out split) depends only on its own draw: unlike a
    permutation of n positions, adding a record leaves every other record's draw unchanged (the
    i-th draw is the i-th value of one stream), so the add/remove analysis applies per record."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    return key.numpy().random(n) < probability


def uniform_shards(key: MechanismKey, n: int, shards: int) -> np.ndarray:
    """Per-record independent uniform shard (rank) numbers, (n,) int64."""
    return key.numpy().integers(0, shards, size=n, dtype=np.int64)
