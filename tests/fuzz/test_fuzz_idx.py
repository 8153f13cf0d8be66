"""Hypothesis fuzzing of the IDX reader: anything but a well-formed file is one DataError.

Never a MemoryError (huge declared sizes are refused before allocating), never another
exception type, never a hang (pytest-timeout bounds each test).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import FUZZ, idx_bytes, one_line
from hypothesis import given
from hypothesis import strategies as st

from tdpdm.data.errors import DataError
from tdpdm.data.idx import IDX_DTYPES, parse_idx, read_idx, read_idx_header

pytestmark = pytest.mark.timeout(300)

VALID = idx_bytes(0x08, (3, 2, 2), bytes(range(12)))


def _parse_or_data_error(blob: bytes, ndim: int = 3) -> np.ndarray | None:
    try:
        arr = parse_idx(blob, source="fuzz.idx", expect_ndim=ndim, max_items=1000)
    except DataError as err:
        assert str(err).startswith("fuzz.idx: ") and one_line(str(err))
        return None
    # Whatever parses is exactly what the header declares.
    assert arr.ndim == ndim and arr.flags.writeable
    assert arr.nbytes + 4 + 4 * ndim == len(blob)
    return arr


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_parse_or_fail_cleanly(blob: bytes) -> None:
    _parse_or_data_error(blob)
    _parse_or_data_error(blob, ndim=1)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_valid_file(mutations: list[tuple[int, int]]) -> None:
    blob = bytearray(VALID)
    for pos, value in mutations:
        blob[pos] = value
    arr = _parse_or_data_error(bytes(blob))
    if bytes(blob[:16]) == VALID[:16]:  # header intact: payload mutations must parse
        assert arr is not None and arr.shape == (3, 2, 2)


@FUZZ
@given(
    code=st.sampled_from(sorted(IDX_DTYPES)),
    dims=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    payload=st.binary(max_size=64),
    max_items=st.sampled_from([10, 10_000_000]),
)
def test_huge_declared_sizes_are_refused_before_allocating(
    code: int, dims: tuple[int, int, int], payload: bytes, max_items: int
) -> None:
    blob = idx_bytes(code, dims, payload)
    declared = int(np.prod([int(d) for d in dims], dtype=object)) * IDX_DTYPES[code].itemsize
    if declared == len(payload) and 0 not in dims and dims[0] <= max_items:
        return  # a (tiny) genuinely valid file
    with pytest.raises(DataError):
        parse_idx(blob, source="bomb.idx", expect_ndim=3, max_items=max_items)


@FUZZ
@given(st.binary(max_size=200), st.booleans())
def test_file_reader_and_header_reader_agree(
    tmp_path_factory: pytest.TempPathFactory, blob: bytes, gzipped: bool
) -> None:
    """read_idx (whole file) and read_idx_header (header only) on the same bytes, raw or gzip:
    both DataError, or a header that matches the parsed array."""
    path = tmp_path_factory.mktemp("idx") / "data.idx"
    path.write_bytes(gzip.compress(blob) if gzipped else blob)
    try:
        dtype, dims = read_idx_header(str(path), expect_ndim=1)
    except DataError:
        dtype = dims = None
    try:
        arr = read_idx(str(path), expect_ndim=1)
    except DataError:
        arr = None
    if arr is not None:
        assert dims == arr.shape and dtype is not None and dtype.newbyteorder("=") == arr.dtype


def test_gzip_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.idx.gz"
    # 8 MB of zeros compress to ~8 kB; the cap below is 1 MB.
    path.write_bytes(gzip.compress(idx_bytes(0x08, (8 << 20,), bytes(8 << 20))))
    with pytest.raises(DataError, match="gzip bomb"):
        read_idx(str(path), expect_ndim=1, max_items=10 << 20, max_decompressed_bytes=1 << 20)


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (b"", "truncated header"),
        (b"\x00\x00\x08", "truncated header"),
        (b"PK\x03\x04", "bad magic"),
        (idx_bytes(0x07, (1, 1, 1), b"\x00"), "unknown IDX dtype"),
        (idx_bytes(0x08, (1, 1), b"\x00"), "wrong number of dimensions"),
        (idx_bytes(0x08, (0, 28, 28), b""), "size zero"),
        (idx_bytes(0x08, (2**32 - 1, 28, 28), b""), "absurd size"),
        (idx_bytes(0x08, (2, 28, 28), bytes(100)), "truncated payload"),
        (idx_bytes(0x08, (1, 1, 1), bytes(5)), "trailing garbage"),
    ],
)
def test_each_malformation_names_its_problem(blob: bytes, problem: str) -> None:
    with pytest.raises(DataError, match=problem) as info:
        parse_idx(blob, source="x.idx", expect_ndim=3)
    assert one_line(str(info.value))
