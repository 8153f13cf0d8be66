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
from tdpdm.data.parquet import metadata_json, read_table, write_table

META_KEY = b"tdpdm"


def write_latents(
    uri: str, latents: np.ndarray, labels: np.ndarray, metadata: dict[str, Any], seed: int
) -> None:
    if latents.ndim != 2 or len(latents) != len(labels):
        raise ValueError(f"latents {latents.shape} and labels {labels.shape} do not match")
    if not np.isfinite(latents).all():
        raise ValueError("latents contain NaN or inf; refusing to write them")
    order = np.random.default_rng(seed).permutation(len(latents))
    d = latents.shape[1]
    flat = pa.array(latents[order].astype(np.float32).reshape(-1))
    table = pa.table(
        {
            "latent": pa.FixedSizeListArray.from_arrays(flat, d),
            "label": pa.array(labels[order].astype(np.int64)),
        }
    )
    write_table(uri, table, {META_KEY: metadata})


def read_latents(uri: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    table = read_table(uri)
    if set(table.column_names) != {"latent", "label"}:
        raise ValueError(f"{storage.redact(uri)}: expected columns latent, label")
    column = table.column("latent").combine_chunks()
    d = column.type.list_size
    latents = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)
    labels = table.column("label").to_numpy()
    meta = metadata_json(table, META_KEY)
    if not np.isfinite(latents).all():
        raise ValueError(f"{storage.redact(uri)}: latents contain NaN or inf")
    return latents.astype(np.float32), labels.astype(np.int64), meta
