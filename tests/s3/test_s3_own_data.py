"""Issue 15 on an object store: your own images read from a real S3 endpoint (moto's server on
loopback), a class-folder tree and a Hugging Face Parquet file, with the same arrays as from a
local disk; a hostile object is one error line naming its s3:// URI and no credential."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto_endpoint import SECRETS
from PIL import Image

from tdpdm.data.errors import DataError
from tdpdm.data.inputs import data_source

CLASSES = ("ant", "bee")


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _records(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 10, 10), dtype=np.uint8), np.arange(n) % 2


def test_class_folders_on_s3(s3) -> None:
    images, labels = _records()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        s3.put(f"mine/{CLASSES[label]}/{i:03d}.png", _png(image))
    source = data_source(s3.uri("mine"), name="mine", image_size=10)
    info = source.describe()
    assert (info.n_records, info.class_names, info.channels) == (6, CLASSES, 1)
    got, got_labels = source.read()
    order = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(got[:, 0], images[order])
    np.testing.assert_array_equal(got_labels, labels[order])

    s3.put("mine/bee/zz.png", b"\x89PNG broken")
    with pytest.raises(DataError) as err:
        data_source(s3.uri("mine"), name="mine", image_size=10).describe()
    message = str(err.value)
    assert message.startswith(s3.uri("mine", "bee", "zz.png")) and "\n" not in message
    assert not any(secret in message for secret in SECRETS)


def test_hf_parquet_on_s3(s3) -> None:
    images, labels = _records()
    table = pa.table(
        {
            "image": pa.array(
                [{"bytes": _png(im), "path": None} for im in images],
                type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "label": pa.array(labels, type=pa.int64()),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put("hf/train.parquet", buf.getvalue())
    source = data_source(s3.uri("hf", "train.parquet"), name="hf", image_size=10, classes=CLASSES)
    got, got_labels = source.read()
    np.testing.assert_array_equal(got[:, 0], images)
    np.testing.assert_array_equal(got_labels, labels)
