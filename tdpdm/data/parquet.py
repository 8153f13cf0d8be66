"""Parquet tables to and from any storage URI, atomically written, with one-line errors."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tdpdm.data import storage
from tdpdm.data.errors import DataError


def write_table(
    uri: str, table: pa.Table, metadata: dict[bytes, Any], *, private: bool = False
) -> None:
    """Write `table` with JSON-encoded schema `metadata` in one atomic put."""
    encoded = {key: json.dumps(value).encode() for key, value in metadata.items()}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(encoded), buf)
    storage.write_bytes_atomic(uri, buf.getvalue(), private=private)


def read_table(uri: str) -> pa.Table:
    raw = storage.read_bytes(uri)
    try:
        table = pq.read_table(io.BytesIO(raw))
        # Field names are decoded lazily: force it here, so a damaged name (bytes that are not
        # UTF-8) fails in this one place instead of wherever a reader first touches a column.
        _decode_field_names(table.schema)
        return table
    except UnicodeDecodeError:
        raise DataError(
            f"{storage.redact(uri)}: not a readable Parquet file (a field name is not UTF-8)"
        ) from None
    except (pa.ArrowException, OSError) as err:
        # ArrowException covers every Arrow failure on hostile bytes (invalid, not implemented,
        # capacity, ...); the Parquet footer is untrusted input like the rest of the file.
        raise DataError(f"{storage.redact(uri)}: not a readable Parquet file ({err})") from None


def _decode_field_names(fields) -> None:
    """Touch every (nested) field name, which makes pyarrow decode it."""
    for field in fields:
        _ = field.name
        kind = field.type
        if pa.types.is_struct(kind):
            _decode_field_names(kind.fields)
        elif hasattr(kind, "value_field"):  # list, large list, fixed-size list, map values
            _decode_field_names([kind.value_field])


def metadata_json(table: pa.Table, key: bytes, source: str = "table") -> dict[str, Any]:
    """The JSON object stored under `key` in the schema metadata ({} when absent)."""
    try:
        value = json.loads((table.schema.metadata or {}).get(key, b"{}"))
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise DataError(f"{source}: schema metadata {key.decode()!r} is not a JSON object")
    return value
