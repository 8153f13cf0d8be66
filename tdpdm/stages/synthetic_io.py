"""The synthetic data set as Parquet that Hugging Face `datasets` reads as an Image feature.

Columns: `image` (struct of PNG `bytes` and `path`, the layout of `datasets.Image`) and
`label` (int64, a `ClassLabel`). The schema carries the `huggingface` features metadata, so
`load_dataset("parquet", ...)` reports `Image()`, and a `tdpdm` key with the guarantee.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from tdpdm.data import storage
from tdpdm.data.parquet import metadata_json, read_table, write_table

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_synthetic(
    uri: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: list[str],
    guarantee: dict[str, Any],
) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
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
    features = {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": list(class_names)},
    }
    write_table(uri, table, {b"huggingface": {"info": {"features": features}}, b"tdpdm": guarantee})


def read_synthetic(uri: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(images uint8, labels int64, tdpdm metadata) from a synthetic Parquet file."""
    table = read_table(uri)
    for column in ("image", "label"):
        if column not in table.column_names:
            raise ValueError(f"{storage.redact(uri)}: no {column!r} column")
    images = []
    for i, cell in enumerate(table.column("image").to_pylist()):
        try:
            with Image.open(io.BytesIO(cell["bytes"])) as im:
                images.append(np.asarray(im.convert("L")))
        except Exception as err:
            raise ValueError(
                f"{storage.redact(uri)}: row {i} is not a readable image ({err})"
            ) from None
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    meta = metadata_json(table, b"tdpdm")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{storage.redact(uri)}: images have mixed shapes {sorted(shapes)}")
    return np.stack(images).astype(np.uint8), labels, meta
