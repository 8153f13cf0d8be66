"""Privacy units (several images per person): which unit each record belongs to, and the
bound to at most k records per unit, drawn in secret before anything else reads the data.

`privacy_unit` (`--privacy-unit`) names where a record's unit comes from: a column of a Parquet
or Arrow data set, an array of an `.npz` archive (`units` by convention), the `units=` array of
the Python API. Whether that column or array exists (and its length) is structure, checked
before any charge; the unit ids themselves are private (who owns which records) and are read by
`DataSource.read_units` only inside `PrivateTrainingSet.open`, under the ledger grant.

The bound (`bound_per_unit`): every record gets an independent uniform priority from the secret
key, and each unit keeps its k records of highest priority. A unit's choice is a uniform random
k-subset of its own records, independent of every other unit's records, so adding or removing
one unit changes at most k records of the bounded set (the priorities of the other records can
be coupled unchanged). `tdpdm.privacy.units` turns that into the per-unit guarantee.
"""

from __future__ import annotations

import numpy as np

from tdpdm.data.errors import DataError


def unit_ids(values: np.ndarray, n: int, where: str) -> np.ndarray:
    """Integer ids (0..U-1) for unit values of any hashable kind, one per record (private)."""
    values = np.asarray(values)
    if values.shape != (n,):
        raise DataError(f"{where}: the privacy units do not give one value per record")
    if values.dtype.kind == "O":
        if any(v is None for v in values):
            # no count, no position: which records lack a unit is private
            raise DataError(f"{where}: some records have no privacy unit (null values)")
        values = values.astype(str)
    elif values.dtype.kind == "f" and not np.isfinite(values).all():
        raise DataError(f"{where}: some records have no privacy unit (NaN values)")
    return np.unique(values, return_inverse=True)[1].reshape(-1)


def bound_per_unit(units: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask keeping at most `k` records of each unit, a uniform secret choice per
    unit (see the module docstring). `rng` must come from a secret mechanism key."""
    if k < 1:
        raise ValueError(f"records per unit must be at least 1, got {k}")
    priority = rng.random(len(units))
    order = np.lexsort((-priority, units))  # by unit, then highest priority first
    sorted_units = units[order]
    starts = np.r_[0, np.flatnonzero(sorted_units[1:] != sorted_units[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(units)]))
    rank = np.arange(len(units)) - run_start
    keep = np.zeros(len(units), dtype=bool)
    keep[order[rank < k]] = True
    return keep
