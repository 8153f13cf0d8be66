"""Hypothesis fuzzing of the readers of your own data (issue 15): image folders, Hugging Face
Parquet and `.npz`. Whatever the bytes, a source either describes and reads well-formed records
(uint8 (N, C, S, S), labels in range) or fails with one DataError line naming the file: never
another exception type, never a MemoryError, never a hang. Files live in fsspec's in-memory
store (`memory://`), which the storage layer supports like any other.
"""

from __future__ import annotations

import io
import itertools

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fuzz_support import FUZZ, FUZZ_SLOW, one_line
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tdpdm.data.errors import DataError
from tdpdm.data.inputs import data_source

pytestmark = pytest.mark.timeout(300)

SIZE = 8
_names = itertools.count()


def _png(seed: int = 0, side: int = 6, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


VALID_PNG, VALID_JPEG = _png(), _png(fmt="JPEG")


def _put(files: dict[str, bytes]) -> str:
    root = f"/fuzz-sources/{next(_names)}"
    fs = fsspec.filesystem("memory")
    for name, blob in files.items():
        fs.pipe(f"{root}/{name}", blob)
    return f"memory://{root}"


def _read_or_data_error(uri: str, **kwargs) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        source = data_source(uri, name="fuzz", image_size=SIZE, **kwargs)
        info = source.describe()
        images, labels = source.read()
    except DataError as err:
        assert one_line(str(err)) and str(err).startswith("memory://"), str(err)
        return None
    assert images.dtype == np.uint8 and images.shape == (info.n_records, info.channels, SIZE, SIZE)
    assert labels.dtype == np.int64 and ((labels >= 0) & (labels < info.num_classes)).all()
    return images, labels


def _mutate(blob: bytes, mutations: list[tuple[int, int]]) -> bytes:
    out = bytearray(blob)
    for pos, value in mutations:
        out[pos % len(out)] = value
    return bytes(out)


MUTATIONS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["a.png", "a.jpg", "a.jpeg"]))
def test_random_bytes_in_a_class_folder(blob: bytes, name: str) -> None:
    _read_or_data_error(_put({"cat/ok.png": VALID_PNG, f"dog/{name}": blob}))


@FUZZ
@given(MUTATIONS, st.booleans(), st.integers(0, 80))
def test_mutated_or_truncated_images(mutations, jpeg: bool, cut: int) -> None:
    blob = _mutate(VALID_JPEG if jpeg else VALID_PNG, mutations)
    blob = blob[: len(blob) - cut] if cut else blob
    _read_or_data_error(_put({"cat/ok.png": VALID_PNG, "dog/x.jpg": blob}))


def _hf_parquet(blobs: list[bytes], labels: list[int] | None) -> bytes:
    columns = {
        "image": pa.array(
            [{"bytes": b, "path": None} for b in blobs],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    }
    if labels is not None:
        columns["label"] = pa.array(labels, type=pa.int64())
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


VALID_PARQUET = _hf_parquet([VALID_PNG, _png(1)], [0, 1])


@FUZZ_SLOW
@given(MUTATIONS)
def test_mutated_parquet(mutations) -> None:
    uri = _put({"d.parquet": _mutate(VALID_PARQUET, mutations)}) + "/d.parquet"
    _read_or_data_error(uri, classes=("a", "b"))


@FUZZ_SLOW
@given(
    st.lists(st.one_of(st.binary(max_size=60), st.just(VALID_PNG)), min_size=1, max_size=4),
    st.one_of(st.none(), st.lists(st.integers(-3, 5), min_size=4, max_size=4)),
)
def test_parquet_with_hostile_cells(blobs: list[bytes], labels: list[int] | None) -> None:
    labels = None if labels is None else labels[: len(blobs)]
    uri = _put({"d.parquet": _hf_parquet(blobs, labels)}) + "/d.parquet"
    _read_or_data_error(uri, classes=("a", "b") if labels is not None else None)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


VALID_NPZ = _npz(images=np.zeros((3, 6, 6), np.uint8), labels=np.array([0, 1, 0]))


@FUZZ_SLOW
@given(MUTATIONS)
def test_mutated_npz(mutations) -> None:
    uri = _put({"d.npz": _mutate(VALID_NPZ, mutations)}) + "/d.npz"
    _read_or_data_error(uri, classes=("a", "b"))


@FUZZ_SLOW
@given(
    dtype=st.sampled_from(["uint8", "int16", "float32", "float64", "bool"]),
    shape=st.lists(st.integers(0, 7), min_size=1, max_size=5).map(tuple),
    labels=st.one_of(st.none(), st.lists(st.integers(-2, 4), max_size=6)),
    nan=st.booleans(),
)
def test_npz_with_any_dtype_and_shape(dtype, shape, labels, nan) -> None:
    images = np.ones(shape, dtype=dtype)
    if nan and images.dtype.kind == "f" and images.size:
        images.flat[0] = np.nan
    arrays = {"images": images}
    if labels is not None:
        arrays["labels"] = np.array(labels, dtype=np.int64)
    uri = _put({"d.npz": _npz(**arrays)}) + "/d.npz"
    got = _read_or_data_error(uri, classes=("a", "b") if labels is not None else None)
    if got is not None:
        assert dtype == "uint8" and not (nan and images.dtype.kind == "f")


def _arrow_stream(blobs: list[bytes], labels: list[int]) -> bytes:
    table = pq.read_table(io.BytesIO(_hf_parquet(blobs, labels)))
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


VALID_ARROW = _arrow_stream([VALID_PNG, _png(2)], [1, 0])
STATE = b'{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}'


@FUZZ_SLOW
@given(MUTATIONS, st.integers(0, 40))
def test_mutated_saved_to_disk_folder(mutations, cut: int) -> None:
    """What `datasets.Dataset.save_to_disk` writes: state.json and an Arrow stream shard."""
    blob = _mutate(VALID_ARROW, mutations)
    blob = blob[: len(blob) - cut] if cut else blob
    uri = _put({"state.json": STATE, "data-00000-of-00001.arrow": blob})
    _read_or_data_error(uri, classes=("a", "b"))
