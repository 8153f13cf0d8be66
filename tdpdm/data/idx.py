"""Strict reader for the IDX format (MNIST, Fashion-MNIST), raw or gzip.

Data files may come from anywhere (a mirror, a bucket, a colleague), so the parser trusts
nothing: it checks the header against the payload before allocating, refuses absurd declared
sizes (memory bombs) and caps gzip output (decompression bombs).
Format: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per
dimension, then the items in C order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import zlib

import numpy as np

from tdpdm.data import storage
from tdpdm.data.errors import DataError

#: IDX dtype codes to big-endian numpy dtypes.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

GZIP_MAGIC = b"\x1f\x8b"
#: Largest decompressed payload read_idx accepts (MNIST's largest file is 47 MB).
MAX_DECOMPRESSED_BYTES = 1 << 30
#: Largest file read_idx reads from storage, compressed or not.
MAX_FILE_BYTES = 1 << 30


def parse_idx(
    raw: bytes, *, source: str, expect_ndim: int, max_items: int = 10_000_000
) -> np.ndarray:
    """Decode one IDX blob into a native-endian, writable array.

    ``max_items`` bounds the first dimension (the number of records); ``source`` names the
    file in error messages.
    """
    buf = memoryview(raw)
    dtype, dims, header_len = _parse_header(buf, source, expect_ndim, max_items)
    # Python ints: no overflow, and nothing is allocated before the sizes are checked.
    expected = math.prod(dims) * dtype.itemsize
    payload = len(buf) - header_len
    if payload < expected:
        raise DataError(
            f"{source}: truncated payload: shape {dims} needs {expected} bytes of data, "
            f"file has {payload}"
        )
    if payload > expected:
        raise DataError(
            f"{source}: trailing garbage: {payload - expected} bytes after the {expected} "
            f"bytes that shape {dims} declares"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _parse_header(
    buf: memoryview, source: str, expect_ndim: int, max_items: int
) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, dims, header length) from the start of an IDX blob, every field checked."""
    if len(buf) < 4:
        raise DataError(f"{source}: truncated header ({len(buf)} bytes, IDX needs at least 4)")
    if buf[0] != 0 or buf[1] != 0:
        raise DataError(
            f"{source}: bad magic number 0x{bytes(buf[:4]).hex()} (IDX starts with two zero "
            "bytes); not an IDX file"
        )
    code, ndim = buf[2], buf[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{source}: bad magic number: unknown IDX dtype code 0x{code:02x}")
    if ndim != expect_ndim:
        raise DataError(f"{source}: wrong number of dimensions: {ndim}, expected {expect_ndim}")
    header_len = 4 + 4 * ndim
    if len(buf) < header_len:
        raise DataError(
            f"{source}: truncated header ({len(buf)} bytes, {ndim} dimensions need {header_len})"
        )
    dims = tuple(int(d) for d in np.frombuffer(buf[4:header_len], dtype=">u4"))
    if any(d == 0 for d in dims):
        raise DataError(f"{source}: dimension of size zero in shape {dims}")
    if dims[0] > max_items:
        raise DataError(
            f"{source}: absurd size: declares {dims[0]} items, more than the limit of {max_items}"
        )
    return IDX_DTYPES[code], dims, header_len


def read_idx_header(
    uri: str, *, expect_ndim: int, max_items: int = 10_000_000
) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, shape) from an IDX file's header alone, raw or gzip, reading no item.

    A private file's structure (count, shape, dtype) is public, its items are not: this lets a
    job refuse a malformed data set before it reserves budget or unseals a record.
    """
    fs, path = storage.resolve(uri)
    source = storage.redact(uri)
    try:
        with fs.open(path, "rb") as fh:
            magic = fh.read(2)
            fh.seek(0)
            stream = gzip.GzipFile(fileobj=fh) if magic == GZIP_MAGIC else fh
            header = stream.read(4 + 4 * expect_ndim)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{source}: cannot read the IDX header ({err})") from None
    dtype, dims, _ = _parse_header(memoryview(header), source, expect_ndim, max_items)
    return dtype, dims


def gunzip_capped(blob: bytes, *, source: str, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress a (possibly multi-member) gzip blob, refusing output over max_bytes."""
    out = bytearray()
    data = blob
    while data:
        dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            # max_length >= 1 always (0 would mean unlimited); one byte over the cap is proof.
            out += dec.decompress(data, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise DataError(f"{source}: corrupt gzip data ({exc})") from exc
        if len(out) > max_bytes:
            raise DataError(
                f"{source}: gzip bomb: decompresses to more than the limit of {max_bytes} bytes"
            )
        if not dec.eof:
            raise DataError(f"{source}: corrupt gzip data (truncated stream, no end marker)")
        data = dec.unused_data
        if data and not data.startswith(GZIP_MAGIC):
            if data.strip(b"\x00"):
                raise DataError(f"{source}: corrupt gzip data ({len(data)} bytes of trailing junk)")
            break  # zero padding after the last member (tape-style) is harmless
    return bytes(out)


def read_idx(
    uri: str,
    *,
    expect_ndim: int,
    max_items: int = 10_000_000,
    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES,
) -> np.ndarray:
    """Read an IDX file, raw or gzip (detected by its magic bytes, not its name)."""
    blob = storage.read_bytes(uri, max_bytes=MAX_FILE_BYTES)
    source = storage.redact(uri)
    if blob.startswith(GZIP_MAGIC):
        blob = gunzip_capped(blob, source=source, max_bytes=max_decompressed_bytes)
    return parse_idx(blob, source=source, expect_ndim=expect_ndim, max_items=max_items)
