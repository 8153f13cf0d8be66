"""IDX parsing: every dtype, and every malformed-header and gzip failure mode."""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest

from tdpdm.data.errors import DataError
from tdpdm.data.idx import gunzip_capped, parse_idx, read_idx


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_all_standard_dtypes_round_trip_big_endian(dtype, idx_bytes):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    out = parse_idx(idx_bytes(arr), source="x", expect_ndim=3)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable and out.flags.c_contiguous


def test_big_endian_payload_is_decoded(idx_bytes):
    raw = bytes([0, 0, 0x0B, 1]) + struct.pack(">I", 2) + struct.pack(">hh", 258, -2)
    np.testing.assert_array_equal(parse_idx(raw, source="x", expect_ndim=1), [258, -2])


def _err(raw: bytes, **kw) -> str:
    kw.setdefault("expect_ndim", 1)
    with pytest.raises(DataError) as ei:
        parse_idx(raw, source="some/file", **kw)
    msg = str(ei.value)
    assert msg.startswith("some/file: ") and "\n" not in msg
    return msg


def test_truncated_header():
    assert "truncated header" in _err(b"\x00\x00")
    assert "truncated header" in _err(b"")
    # ndim 3 promises 12 bytes of dimensions; only 4 present.
    assert "truncated header" in _err(bytes([0, 0, 8, 3, 0, 0, 0, 1]), expect_ndim=3)


def test_wrong_magic(idx_bytes):
    raw = bytearray(idx_bytes(np.zeros(4, np.uint8)))
    raw[0] = 0x08
    assert "magic" in _err(bytes(raw))
    assert "magic" in _err(b"PK\x03\x04" + b"\x00" * 20)


def test_unknown_dtype_code():
    assert "dtype code 0x0a" in _err(bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]))


def test_wrong_ndim(idx_bytes):
    raw = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    assert "dimensions: 3, expected 1" in _err(raw, expect_ndim=1)


def test_zero_dimension():
    assert "zero" in _err(bytes([0, 0, 8, 2]) + struct.pack(">II", 5, 0), expect_ndim=2)


def test_truncated_payload(idx_bytes):
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    assert "truncated payload" in _err(raw[:-1], expect_ndim=3)


def test_trailing_garbage(idx_bytes):
    raw = idx_bytes(np.zeros(10, np.uint8))
    msg = _err(raw + b"junk")
    assert "trailing garbage" in msg and "4 bytes" in msg


def test_absurd_size_fails_fast_without_allocating():
    # 2**31 items of 28x28 declared in a 28-byte file: a memory bomb if trusted.
    raw = bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 28, 28) + b"\x00" * 12
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        assert "absurd size" in _err(raw, expect_ndim=3)
        # Even with the item cap lifted, the length check refuses it before any allocation.
        assert "truncated payload" in _err(raw, expect_ndim=3, max_items=2**40)
        # Huge inner dimensions with few items are caught the same way.
        raw2 = bytes([0, 0, 0x0E, 3]) + struct.pack(">III", 1, 2**32 - 1, 2**32 - 1)
        assert "truncated payload" in _err(raw2, expect_ndim=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 1 << 20


def test_read_idx_raw_and_gzip_detected_by_magic_not_name(tmp_path, idx_bytes):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    (tmp_path / "plain.gz").write_bytes(raw)  # raw bytes under a .gz name
    (tmp_path / "packed.bin").write_bytes(gzip.compress(raw))  # gzip without the extension
    for name in ("plain.gz", "packed.bin"):
        np.testing.assert_array_equal(read_idx(str(tmp_path / name), expect_ndim=3), arr)


def test_read_idx_multi_member_gzip_and_zero_padding(tmp_path, idx_bytes):
    raw = idx_bytes(np.arange(100, dtype=np.uint8))
    blob = gzip.compress(raw[:30]) + gzip.compress(raw[30:]) + b"\x00" * 16
    (tmp_path / "f").write_bytes(blob)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "f"), expect_ndim=1), np.arange(100))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-stream"),
        pytest.param(lambda b: b[:20] + bytes(x ^ 0x5A for x in b[20:40]) + b[40:], id="flipped"),
        pytest.param(lambda b: b[:-8] + b"\xff" * 8, id="bad-crc"),
        pytest.param(lambda b: b + b"trailing junk", id="junk-after-stream"),
        pytest.param(lambda b: b"\x1f\x8b" + b"\x00" * 30, id="garbage-header"),
    ],
)
def test_corrupt_gzip(tmp_path, idx_bytes, mangle):
    rng = np.random.default_rng(2)
    raw = idx_bytes(rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(mangle(gzip.compress(raw)))
    with pytest.raises(DataError, match="corrupt gzip") as ei:
        read_idx(str(path), expect_ndim=3)
    assert str(path) in str(ei.value)


def test_gzip_bomb_over_cap_is_refused(tmp_path):
    # 64 MiB of zeros compress to ~64 KiB; with a 4 MiB cap it must stop early.
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\x00" * (1 << 20)
    blob = b"".join(comp.compress(zeros) for _ in range(64)) + comp.flush()
    assert len(blob) < 1 << 20
    path = tmp_path / "bomb.gz"
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="gzip bomb"):
            read_idx(str(path), expect_ndim=1, max_decompressed_bytes=4 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_gunzip_cap_exactly_at_limit_is_allowed():
    data = b"a" * 1000
    assert gunzip_capped(gzip.compress(data), source="s", max_bytes=1000) == data
    with pytest.raises(DataError, match="gzip bomb"):
        gunzip_capped(gzip.compress(data), source="s", max_bytes=999)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(str(tmp_path / "nope"), expect_ndim=1)
