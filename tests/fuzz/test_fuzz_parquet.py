"""Hypothesis fuzzing of the Parquet readers (latents and synthetic images).

A file is either what the writer produces (then the reader returns finite latents, in-range
integer labels, decoded images) or one DataError naming it: random or mutated bytes, wrong
schemas, wrong shapes, NaN/inf, labels out of range, missing values, empty tables. Files live in
fsspec's in-memory store (`memory://`), which the storage layer supports like any other.
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

from tdpdm.data.errors import DataError
from tdpdm.stages.latents_io import read_latents, write_latents
from tdpdm.stages.synthetic_io import IMAGE_TYPE, read_synthetic, write_synthetic

pytestmark = pytest.mark.timeout(300)

NUM_CLASSES = 10
_names = itertools.count()


def _put(blob: bytes) -> str:
    uri = f"memory://fuzz/{next(_names)}.parquet"
    fsspec.filesystem("memory").pipe(uri.removeprefix("memory://"), blob)
    return uri


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _valid_latents() -> bytes:
    uri = f"memory://fuzz/{next(_names)}.parquet"
    rng = np.random.default_rng(0)
    write_latents(uri, rng.normal(size=(6, 4)), np.arange(6) % NUM_CLASSES, {"k": 1}, seed=0)
    return fsspec.filesystem("memory").cat(uri.removeprefix("memory://"))


def _valid_synthetic() -> bytes:
    uri = f"memory://fuzz/{next(_names)}.parquet"
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    write_synthetic(
        uri,
        images,
        np.array([0, 1, 2]),
        class_names=[str(i) for i in range(NUM_CLASSES)],
        guarantee={"epsilon": 1.0},
    )
    return fsspec.filesystem("memory").cat(uri.removeprefix("memory://"))


VALID_LATENTS = _valid_latents()
VALID_SYNTHETIC = _valid_synthetic()


def _read_latents_checked(uri: str) -> None:
    try:
        latents, labels, meta = read_latents(uri, NUM_CLASSES)
    except DataError as err:
        assert str(err).startswith(uri) and one_line(str(err)), str(err)
        return
    assert latents.dtype == np.float32 and latents.ndim == 2 and len(latents) > 0
    assert np.isfinite(latents).all()
    assert labels.dtype == np.int64 and labels.shape == (len(latents),)
    assert ((labels >= 0) & (labels < NUM_CLASSES)).all()
    assert isinstance(meta, dict)


def _read_synthetic_checked(uri: str) -> None:
    try:
        images, labels, meta = read_synthetic(uri)
    except DataError as err:
        assert str(err).startswith(uri) and one_line(str(err)), str(err)
        return
    assert images.dtype == np.uint8 and images.ndim == 3 and len(images) == len(labels) > 0
    assert ((labels >= 0) & (labels < NUM_CLASSES)).all()
    assert isinstance(meta, dict)


def _mutate(blob: bytes, mutations: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(blob)
    for pos, value in mutations:
        out[pos % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(blob: bytes) -> None:
    uri = _put(blob)
    _read_latents_checked(uri)
    _read_synthetic_checked(uri)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.integers(0, 4000)),
)
def test_mutated_valid_files(mutations: list[tuple[int, int]], cut: int | None) -> None:
    _read_latents_checked(_put(_mutate(VALID_LATENTS, mutations, cut)))
    _read_synthetic_checked(_put(_mutate(VALID_SYNTHETIC, mutations, cut)))


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
LABELS = st.one_of(st.none(), st.integers(-3, 13))


@st.composite
def latent_tables(draw: st.DrawFn) -> pa.Table:
    """Tables near the real schema: right or wrong column types, shapes, values and names."""
    rows = draw(st.integers(0, 5))
    dim = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["fixed", "fixed_null", "list", "int", "string", "fixed_int"]))
    values = draw(st.lists(FLOATS, min_size=rows * dim, max_size=rows * dim))
    if kind == "fixed":
        latent = pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), dim)
    elif kind == "fixed_null":
        flat = pa.array(values, pa.float32())
        mask = pa.array([i % 2 == 0 for i in range(rows)]) if rows else None
        latent = pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)
    elif kind == "list":
        latent = pa.array([values[i * dim : (i + 1) * dim] for i in range(rows)])
    elif kind == "fixed_int":
        latent = pa.FixedSizeListArray.from_arrays(pa.array(range(rows * dim), pa.int64()), dim)
    elif kind == "int":
        latent = pa.array(range(rows), pa.int64())
    else:
        latent = pa.array([str(v) for v in range(rows)])
    label_kind = draw(st.sampled_from(["int", "float", "string"]))
    labels = draw(st.lists(LABELS, min_size=rows, max_size=rows))
    if label_kind == "int":
        label = pa.array(labels, pa.int64())
    elif label_kind == "float":
        label = pa.array([None if v is None else float(v) for v in labels], pa.float64())
    else:
        label = pa.array([None if v is None else str(v) for v in labels])
    columns = {"latent": latent, "label": label}
    for name in draw(st.sets(st.sampled_from(["latent", "label", "extra", "label_vector"]))):
        if name in columns and draw(st.booleans()):
            del columns[name]
        elif name not in columns:
            columns[name] = pa.array(range(rows))
    return pa.table(columns)


@FUZZ_SLOW
@given(latent_tables())
def test_latent_tables_of_any_shape(table: pa.Table) -> None:
    _read_latents_checked(_put(_parquet(table)))


@FUZZ_SLOW
@given(
    images=st.lists(
        st.one_of(
            st.none(),
            st.binary(max_size=40),
            st.sampled_from(["png", "big-png", "rgb-png"]),
        ),
        max_size=4,
    ),
    labels=st.lists(LABELS, min_size=4, max_size=4),
    names=st.one_of(st.none(), st.lists(st.text(max_size=3), max_size=12)),
)
def test_synthetic_tables_of_any_shape(images, labels, names) -> None:
    from PIL import Image

    def cell(item):
        if item is None or isinstance(item, bytes):
            return None if item is None else {"bytes": item, "path": "x.png"}
        size, mode = ((2048, 2048), "L") if item == "big-png" else ((28, 28), "L")
        if item == "rgb-png":
            mode = "RGB"
        buf = io.BytesIO()
        Image.new(mode, size).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": "x.png"}

    table = pa.table(
        {
            "image": pa.array([cell(i) for i in images], type=IMAGE_TYPE),
            "label": pa.array(labels[: len(images)], pa.int64()),
        }
    )
    if names is not None:
        meta = {"info": {"features": {"label": {"_type": "ClassLabel", "names": names}}}}
        import json

        table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
    uri = _put(_parquet(table))
    try:
        images_out, labels_out, _ = read_synthetic(uri)
    except DataError as err:
        assert one_line(str(err))
        return
    assert images_out.shape[1:] == (28, 28)  # the 2048x2048 bomb never decodes
    if names:
        assert ((labels_out >= 0) & (labels_out < len(names))).all()
    assert (labels_out >= 0).all()


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (pa.table({"latent": pa.array([1.0]), "label": pa.array([1])}), "expected fixed-size"),
        (pa.table({"latent": pa.array([1.0])}), "expected columns"),
        (
            pa.table(
                {
                    "latent": pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), 2),
                    "label": pa.array([], pa.int64()),
                }
            ),
            "no rows",
        ),
        (
            pa.table(
                {
                    "latent": pa.FixedSizeListArray.from_arrays(pa.array([1.0, np.inf]), 1),
                    "label": pa.array([1, 2]),
                }
            ),
            "NaN or inf",
        ),
        (
            pa.table(
                {
                    "latent": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0]), 1),
                    "label": pa.array([1, 10]),
                }
            ),
            r"outside \[0, 10\)",
        ),
        (
            pa.table(
                {
                    "latent": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0]), 1),
                    "label": pa.array([1, None]),
                }
            ),
            "integers without gaps",
        ),
    ],
)
def test_latents_malformations_name_their_problem(table: pa.Table, problem: str) -> None:
    uri = _put(_parquet(table))
    with pytest.raises(DataError, match=problem) as info:
        read_latents(uri, NUM_CLASSES)
    assert str(info.value).startswith(uri)


def test_metadata_that_is_not_json_is_one_clean_error() -> None:
    table = pa.table(
        {"latent": pa.FixedSizeListArray.from_arrays(pa.array([1.0]), 1), "label": pa.array([1])}
    ).replace_schema_metadata({b"tdpdm": b"[1, 2"})
    with pytest.raises(DataError, match="not a JSON object"):
        read_latents(_put(_parquet(table)))


def test_valid_files_round_trip() -> None:
    """The fuzzers' starting points are good files: the readers accept them unchanged."""
    latents, labels, meta = read_latents(_put(VALID_LATENTS), NUM_CLASSES)
    assert latents.shape == (6, 4) and sorted(labels) == list(range(6)) and meta == {"k": 1}
    images, labels, meta = read_synthetic(_put(VALID_SYNTHETIC))
    assert images.shape == (3, 28, 28) and list(labels) == [0, 1, 2] and meta["epsilon"] == 1.0


def test_every_single_byte_damage_of_a_latents_file_fails_cleanly() -> None:
    """Exhaustive over positions: a byte that is not UTF-8 inside a field name once escaped as
    a UnicodeDecodeError from the first column access (found by the fuzzer above in CI)."""
    for position in range(len(VALID_LATENTS)):
        for value in (0x80, 0xFF):
            damaged = bytearray(VALID_LATENTS)
            damaged[position] = value
            _read_latents_checked(_put(bytes(damaged)))
