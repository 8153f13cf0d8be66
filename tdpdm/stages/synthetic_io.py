"""The synthetic data set as Parquet that Hugging Face `datasets` reads as an Image feature.

Columns: `image` (struct of PNG `bytes` and `path`, the layout of `datasets.Image`: grey PNGs
for (N, H, W) images, RGB PNGs for (N, 3, H, W)) and `label` (int64, a `ClassLabel` with the
data set's class names). The schema carries the `huggingface` features metadata, so
`load_dataset("parquet", ...)` reports `Image()`, and a `tdpdm` key with the guarantee.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tdpdm.data import storage
from tdpdm.data.errors import DataError
from tdpdm.data.parquet import metadata_json, read_table, write_table

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 image, (H, W) grey or (3, H, W) channels first, as PNG bytes."""
    if image.ndim == 3:
        pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), mode="RGB")
    else:
        pil = Image.fromarray(image, mode="L")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_synthetic(
    uri: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: list[str],
    guarantee: dict[str, Any],
    extra: dict[bytes, Any] | None = None,
) -> None:
    """`extra`: more JSON schema metadata (e.g. `tdpdm sample`'s provenance), beside the
    Hugging Face features and the `tdpdm` guarantee, which it cannot replace."""
    table = synthetic_table(images, labels, class_names=class_names, guarantee=guarantee)
    write_table(uri, table, _metadata(class_names, guarantee, extra))


def synthetic_table(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: list[str],
    guarantee: dict[str, Any],
    extra: dict[bytes, Any] | None = None,
) -> pa.Table:
    """The synthetic records as the Arrow table `write_synthetic` writes, its schema metadata
    included (`datasets.Dataset(table)` reads the features from it)."""
    rgb = images.ndim == 4 and images.shape[1] == 3
    if images.dtype != np.uint8 or not (images.ndim == 3 or rgb) or len(images) != len(labels):
        raise ValueError(f"bad synthetic arrays: images {images.shape} {images.dtype}")
    pngs = [png_bytes(img) for img in images]
    table = pa.table(
        {
            "image": pa.array(
                [{"bytes": b, "path": f"synthetic-{i:06d}.png"} for i, b in enumerate(pngs)],
                type=IMAGE_TYPE,
            ),
            "label": pa.array(labels.astype(np.int64)),
        }
    )
    metadata = _metadata(class_names, guarantee, extra)
    return table.replace_schema_metadata({k: json.dumps(v) for k, v in metadata.items()})


def _metadata(
    class_names: list[str], guarantee: dict[str, Any], extra: dict[bytes, Any] | None
) -> dict[bytes, Any]:
    features = {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": list(class_names)},
    }
    metadata = {b"huggingface": {"info": {"features": features}}, b"tdpdm": guarantee}
    return {**(extra or {}), **metadata}


def read_synthetic(uri: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(images uint8 (N, H, W) grey or (N, 3, H, W) colour, labels int64, tdpdm metadata) from
    a synthetic Parquet file."""
    source = storage.redact(uri)
    table = read_table(uri)
    for column in ("image", "label"):
        if column not in table.column_names:
            raise DataError(f"{source}: no {column!r} column")
    if table.num_rows == 0:
        raise DataError(f"{source}: no rows (an empty synthetic data set)")
    images = [_decode(blob, source, i) for i, blob in enumerate(_png_cells(table, source))]
    label_column = table.column("label")
    if not pa.types.is_integer(label_column.type) or label_column.null_count:
        raise DataError(f"{source}: column 'label' must be integers without gaps")
    labels = label_column.to_numpy().astype(np.int64)
    names = _class_names(table)
    high = len(names) if names else np.iinfo(np.int64).max
    if ((labels < 0) | (labels >= high)).any():
        raise DataError(f"{source}: labels outside [0, {len(names) if names else '...'})")
    meta = metadata_json(table, b"tdpdm", source)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"{source}: images have mixed shapes {sorted(shapes)}")
    return np.stack(images).astype(np.uint8), labels, meta


MAX_IMAGE_PIXELS = 1 << 20
"""Synthetic images are small; a PNG declaring more pixels is a decompression bomb."""


def _png_cells(table: pa.Table, source: str) -> list[bytes | None]:
    """The `bytes` field of the image column only: the `path` strings are never decoded (a
    damaged file may hold invalid UTF-8 there) and are not needed."""
    column = table.column("image").combine_chunks()
    kind = column.type
    if not (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0):
        raise DataError(f"{source}: column 'image' has type {kind}, expected Image structs")
    blobs = column.field("bytes")
    if not (pa.types.is_binary(blobs.type) or pa.types.is_large_binary(blobs.type)):
        raise DataError(f"{source}: image bytes have type {blobs.type}, expected binary")
    valid = column.is_valid().to_pylist()
    return [b if ok else None for b, ok in zip(blobs.to_pylist(), valid, strict=True)]


def _decode(blob: bytes | None, source: str, row: int) -> np.ndarray:
    try:
        if blob is None:
            raise ValueError("no image")
        with Image.open(io.BytesIO(blob)) as im:
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise ValueError(f"{im.size[0]}x{im.size[1]} pixels, over {MAX_IMAGE_PIXELS}")
            if im.mode in ("L", "1", "I", "I;16", "LA"):
                return np.asarray(im.convert("L"))
            return np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    except Exception as err:
        raise DataError(f"{source}: row {row} is not a readable image ({err})") from None


def synthetic_class_names(uri: str) -> list[str]:
    """The ClassLabel names a synthetic file declares ([] when it declares none), read from its
    Parquet footer only: no image is decoded."""
    raw = storage.read_bytes(uri)
    try:
        schema = pq.read_schema(io.BytesIO(raw))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{storage.redact(uri)}: not a readable Parquet file ({err})") from None
    return _class_names(schema)


def _class_names(table: pa.Table | pa.Schema) -> list[str]:
    """ClassLabel names from the Hugging Face features metadata, [] when absent or odd."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        names = info["info"]["features"]["label"]["names"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return []
    return list(names) if isinstance(names, list) else []
