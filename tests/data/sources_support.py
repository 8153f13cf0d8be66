"""Builders of small user data sets (issue 15) in the three input layouts, from arrays.

`png_tree`, `hf_parquet` and `npz_file` write the same records (uint8 (N, H, W) grey or
(N, H, W, 3) RGB, integer labels) the way a user would bring them; the reader tests and the
end-to-end test compare what the sources read back with the arrays.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png_bytes(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def tiny_images(n: int, side: int = 12, rgb: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, side, side, 3) if rgb else (n, side, side)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def png_tree(
    root: Path, images: np.ndarray, labels: np.ndarray | None, classes: Sequence[str] = ()
) -> Path:
    """root/<class>/<i>.png (or root/<i>.png when unlabelled)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        folder = root if labels is None else root / classes[int(labels[i])]
        folder.mkdir(exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(png_bytes(image))
    return root


def hf_table(
    images: np.ndarray, labels: np.ndarray | None, classes: Sequence[str] | None
) -> pa.Table:
    """The Hugging Face `datasets` image layout, with its `huggingface` schema metadata."""
    struct = pa.array(
        [{"bytes": png_bytes(im), "path": f"{i}.png"} for i, im in enumerate(images)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    columns = {"image": struct}
    features: dict = {"image": {"_type": "Image"}}
    if labels is not None:
        columns["label"] = pa.array(labels, type=pa.int64())
        features["label"] = {"_type": "ClassLabel", "names": list(classes or [])}
    table = pa.table(columns)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return table.replace_schema_metadata(meta)


def hf_parquet(
    path: Path, images: np.ndarray, labels: np.ndarray | None, classes: Sequence[str] | None
) -> Path:
    pq.write_table(hf_table(images, labels, classes), path)
    return path


def npz_file(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(path, **arrays)
    return path
