"""Latents as Parquet: one row per record, never pixels or record identifiers.

Rows are shuffled before writing so that row order does not map back to file positions. The
schema metadata key `tdpdm` holds the guarantee: for `released` latents it is the DP statement
of the file itself; for `private` latents it marks them a sensitive intermediate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from tdpdm.data import storage
from tdpdm.data.errors import DataError
from tdpdm.data.parquet import metadata_json, read_table, write_table

META_KEY = b"tdpdm"


def write_latents(
    uri: str,
    latents: np.ndarray,
    labels: np.ndarray,
    metadata: dict[str, Any],
    seed: int | np.random.Generator,
    label_vectors: np.ndarray | None = None,
    *,
    private: bool = False,
) -> None:
    """`label_vectors` (released mode only): each row's noisy one-hot label, kept as a column
    `label_vector` because stage 2 needs more than its arg-max. Rows are shuffled by `seed` (the
    pipeline passes a secret generator); `private` files are written 0600."""
    if latents.ndim != 2 or len(latents) != len(labels):
        raise ValueError(f"latents {latents.shape} and labels {labels.shape} do not match")
    if not np.isfinite(latents).all():
        raise ValueError("latents contain NaN or inf; refusing to write them")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    order = rng.permutation(len(latents))
    d = latents.shape[1]
    flat = pa.array(latents[order].astype(np.float32).reshape(-1))
    columns = {
        "latent": pa.FixedSizeListArray.from_arrays(flat, d),
        "label": pa.array(labels[order].astype(np.int64)),
    }
    if label_vectors is not None:
        lv = np.asarray(label_vectors, dtype=np.float32)[order]
        columns["label_vector"] = pa.FixedSizeListArray.from_arrays(
            pa.array(lv.reshape(-1)), lv.shape[1]
        )
    table = pa.table(columns)
    write_table(uri, table, {META_KEY: metadata}, private=private)


def read_latents(
    uri: str, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(latents float32 (N, d), labels int64 (N,), metadata); DataError on anything else, so
    that a damaged or foreign file fails here in one line, not deep inside training."""
    source = storage.redact(uri)
    table = read_table(uri)
    if set(table.column_names) - {"label_vector"} != {"latent", "label"}:
        raise DataError(f"{source}: expected columns latent, label")
    if table.num_rows == 0:
        raise DataError(f"{source}: no rows (an empty latents file)")
    column = _float_vectors(table, "latent", source)
    latents = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
    labels = _labels(table, source, num_classes)
    meta = metadata_json(table, META_KEY, source)
    if not np.isfinite(latents).all():
        raise DataError(f"{source}: latents contain NaN or inf")
    return latents.astype(np.float32), labels, meta


def _float_vectors(table: pa.Table, name: str, source: str) -> pa.FixedSizeListArray:
    column = table.column(name).combine_chunks()
    kind = column.type
    if not (pa.types.is_fixed_size_list(kind) and pa.types.is_floating(kind.value_type)):
        raise DataError(f"{source}: column {name!r} has type {kind}, expected fixed-size floats")
    if column.null_count:
        raise DataError(f"{source}: column {name!r} has {column.null_count} missing rows")
    return column


def _labels(table: pa.Table, source: str, num_classes: int | None) -> np.ndarray:
    column = table.column("label")
    if not pa.types.is_integer(column.type) or column.null_count:
        raise DataError(f"{source}: column 'label' must be integers without gaps ({column.type})")
    labels = column.to_numpy().astype(np.int64)
    high = num_classes if num_classes is not None else np.iinfo(np.int64).max
    bad = (labels < 0) | (labels >= high)
    if bad.any():
        limit = f"[0, {num_classes})" if num_classes is not None else "[0, ...)"
        raise DataError(f"{source}: {int(bad.sum())} labels outside {limit}")
    return labels


def read_label_vectors(uri: str) -> np.ndarray | None:
    """The released noisy one-hot labels, or None when the file has none (private latents)."""
    table = read_table(uri)
    if "label_vector" not in table.column_names:
        return None
    column = _float_vectors(table, "label_vector", storage.redact(uri))
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
    return values.astype(np.float32)
