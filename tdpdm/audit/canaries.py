"""Canaries: auditor-made records, each inserted into the training set with probability 1/2.

The design follows the neighbouring relation of the guarantee under audit, so that flipping
one coin S_i turns the training set into a *neighbouring* one and the one-run theorem applies:

- `add_remove`: canary i is added (S_i = +1) or left out (S_i = -1); the record count, which
  sets the sampling rates, includes the canaries that went in.
- `replace_one`: canary slot i always holds a record, candidate A_i (S_i = +1) or its twin B_i
  (S_i = -1), so the record count is the same whichever coins fall (it is public there).

Canaries are drawn from a seeded generator, never from the private data; their content does not
depend on the coins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdpdm.data.private import AccessGrant, PrivateTrainingSet
from tdpdm.privacy.adjacency import Adjacency

CANARY_STREAM = 0xCA7A27


@dataclass(frozen=True)
class CanaryDesign:
    """m canary slots, their candidate records, and the coins (kept by the auditor)."""

    candidates: np.ndarray
    """uint8 (m, H, W) for add/remove; (2m, H, W) for replace-one: A_0..A_{m-1}, B_0..B_{m-1}."""
    labels: np.ndarray
    """int64 labels of the candidates."""
    included: np.ndarray
    """bool (m,): S_i = +1 (canary i, or A_i, went in)."""
    adjacency: Adjacency

    @property
    def m(self) -> int:
        return len(self.included)

    @property
    def paired(self) -> bool:
        return self.adjacency is Adjacency.REPLACE_ONE

    def inserted(self) -> tuple[np.ndarray, np.ndarray]:
        """The records that go into the training set, in slot order."""
        if self.paired:
            pick = np.where(self.included, np.arange(self.m), self.m + np.arange(self.m))
        else:
            pick = np.flatnonzero(self.included)
        return self.candidates[pick], self.labels[pick]


def make_canaries(
    m: int,
    adjacency: Adjacency,
    *,
    seed: int,
    shape: tuple[int, ...] = (28, 28),
    num_classes: int = 10,
    density: float = 0.5,
) -> CanaryDesign:
    """Random binary images (pixel on w.p. `density`) with random labels, and fair coins.

    Independent random images are far apart from each other and from real digits, so what the
    model learns about one tells little about another: membership signal is per canary."""
    if m < 2:
        raise ValueError(f"an audit needs at least 2 canaries, got {m}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, CANARY_STREAM]))
    count = 2 * m if adjacency is Adjacency.REPLACE_ONE else m
    images = np.where(rng.random((count, *shape)) < density, 255, 0).astype(np.uint8)
    labels = rng.integers(0, num_classes, size=count).astype(np.int64)
    included = rng.random(m) < 0.5
    return CanaryDesign(images, labels, included, adjacency)


class CanaryTrainingSet(PrivateTrainingSet):
    """The configured private training set with the design's canaries appended.

    Reading it is reading the private set: the same grant check, the same read counter, and the
    base's own secret subset draws (a configured subset is drawn by `base`; the canaries are
    appended after it, each present or absent by its coin alone)."""

    def __init__(self, base: PrivateTrainingSet, design: CanaryDesign) -> None:
        super().__init__(base.source)  # `open` delegates to `base`
        self.subset = base.subset
        self.base = base
        self.design = design

    @property
    def reads(self) -> int:
        return self.base.reads

    @reads.setter
    def reads(self, value: int) -> None:  # PrivateTrainingSet.__init__ assigns it
        pass

    def n_records(self) -> int:
        return self.base.n_records() + len(self.design.inserted()[1])

    def open(self, grant: AccessGrant) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self.base.open(grant)
        extra_images, extra_labels = self.design.inserted()
        if extra_images.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"canaries are {extra_images.shape[1:]} images, the data set has {images.shape[1:]}"
            )
        return (
            np.concatenate([images, extra_images]),
            np.concatenate([labels, extra_labels]),
        )
