"""The one sum every sufficient-statistics release is made of: each record's feature vector
added to its row of a table (its class, or its class and component). The table is linear in
the records, so it can be summed over shards anywhere and added up before the release's one
noise draw: `dp-moments` and `dp-mixture` call `row_sums`, and the pipeline may swap in a
summer that spreads the shards over Ray workers (`tdpdm.distributed.stage2_sums`) with
`summing_with`. The noise, the event and the ledger stay with the caller: one release, however
many shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import numpy as np

CHUNK = 2048
"""Records per chunk (bounds the memory, not the result): the full model's features are
d(d+1)/2 wide (4,851 for d = 98), and all 60k records at once took over 10 GB of temporaries."""

Features = Callable[..., np.ndarray]
"""(per-record arrays, each (n, ...)) -> (n, p) feature vectors, each of norm <= 1."""
RowSums = Callable[..., np.ndarray]
"""(rows (n,), num_rows, features, *arrays) -> the (num_rows, p) table."""


def local_row_sums(
    rows: np.ndarray, num_rows: int, features: Features, *arrays: np.ndarray
) -> np.ndarray:
    """The table summed in this process, chunk by chunk."""
    rows = np.asarray(rows, dtype=np.int64)
    width = features(*(a[:0] for a in arrays)).shape[1]
    table = np.zeros((num_rows, width))
    for i in range(0, len(rows), CHUNK):
        part = slice(i, i + CHUNK)
        onehot = np.eye(num_rows)[rows[part]]  # (chunk, rows)
        table += onehot.T @ features(*(a[part] for a in arrays))
    return table


_SUMMER: ContextVar[RowSums] = ContextVar("tdpdm_row_sums", default=local_row_sums)


def row_sums(rows: np.ndarray, num_rows: int, features: Features, *arrays: np.ndarray):
    """The table, by whichever summer `summing_with` set (in this process by default)."""
    return _SUMMER.get()(rows, num_rows, features, *arrays)


def summed_where() -> str:
    """Where `row_sums` sums now (the report's stage details): a summer's `where`, or local."""
    return str(getattr(_SUMMER.get(), "where", "local"))


@contextlib.contextmanager
def summing_with(summer: RowSums) -> Iterator[None]:
    """Sum every table inside the block with `summer` (e.g. over Ray workers)."""
    token = _SUMMER.set(summer)
    try:
        yield
    finally:
        _SUMMER.reset(token)
