"""Stage 2's sufficient statistics summed on Ray: the records' latents are split into shards,
each Ray task sums its shard's table (`local_row_sums`), and the driver adds the partial tables
up. The caller then draws the release's noise once, on the driver, and records one event: the
ledger sees one release per table, however many shards (issue 13).

The shards travel through Ray's object store inside this job's charge, like stage 1's records;
a task returns only its (rows x features) table of sums.
"""

from __future__ import annotations

import functools

import numpy as np

from tdpdm.distributed.ray_runtime import import_ray
from tdpdm.stages.row_sums import Features, RowSums, local_row_sums


def ray_row_sums(shards: int) -> RowSums:
    """A `RowSums` that spreads the records over `shards` Ray tasks (at least one record
    each). Needs a running Ray (the pipeline's `ray_for`)."""
    if shards < 1:
        raise ValueError(f"shards must be a positive integer, got {shards}")

    def summer(rows: np.ndarray, num_rows: int, features: Features, *arrays: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        parts = [p for p in np.array_split(np.arange(len(rows)), shards) if len(p)]
        if not parts:  # no records: the zero table, nothing to ship
            return local_row_sums(rows, num_rows, features, *arrays)
        ray = import_ray()
        task = ray.remote(num_cpus=1)(local_row_sums)
        refs = [task.remote(rows[p], num_rows, features, *(a[p] for a in arrays)) for p in parts]
        return functools.reduce(np.add, ray.get(refs))

    summer.where = f"ray ({shards} shard{'s' if shards > 1 else ''})"  # type: ignore[attr-defined]
    return summer
