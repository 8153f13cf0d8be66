"""Shared fixtures for the data-layer tests: IDX builders, HTTP mirrors (real data:
`shared_datasets` in tests/conftest.py)."""

from __future__ import annotations

import gzip
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tdpdm.data.catalog import STANDARD_FILES

IDX_CODES = {
    np.dtype("uint8"): 0x08,
    np.dtype("int8"): 0x09,
    np.dtype("int16"): 0x0B,
    np.dtype("int32"): 0x0C,
    np.dtype("float32"): 0x0D,
    np.dtype("float64"): 0x0E,
}


def encode_idx(arr: np.ndarray, code: int | None = None) -> bytes:
    """IDX bytes for an array (big-endian payload), optionally with a forced dtype code."""
    arr = np.asarray(arr)
    code = IDX_CODES[arr.dtype] if code is None else code
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def idx_bytes() -> Callable[..., bytes]:
    return encode_idx


@pytest.fixture
def small_split() -> tuple[np.ndarray, np.ndarray]:
    """A tiny valid split: 6 random 28x28 uint8 images, labels 0..5."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.arange(6, dtype=np.uint8)


@pytest.fixture
def write_split(tmp_path: Path) -> Callable[..., Path]:
    """Write a train split's two files (bytes given, gzip or not) into a fresh data dir."""

    def write(images: bytes, labels: bytes, *, compress: bool = True, split: str = "train") -> Path:
        d = tmp_path / "data"
        d.mkdir(exist_ok=True)
        for key, blob in ((f"{split}-images", images), (f"{split}-labels", labels)):
            name = STANDARD_FILES[key]
            if compress:
                (d / f"{name}.gz").write_bytes(gzip.compress(blob, mtime=0))
            else:
                (d / name).write_bytes(blob)
        return d

    return write


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static files, no stderr noise, every request path recorded; /truncated/ lies."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/truncated/"):
            # Promise 1000 bytes, send 10, hang up: a mirror dying mid-transfer.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"\x00" * 8)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


class MirrorServer:
    """A real HTTP server on 127.0.0.1 serving a directory of mirror trees."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = partial(_QuietHandler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests  # type: ignore[attr-defined]

    def url(self, sub: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{sub}/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def mirror(
    shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MirrorServer]:
    """Mirror trees of MNIST: good/ (real files), bad/ (corrupted), recompressed/ (same data,
    other gzip bytes), missing/ (404s) and truncated/ (connection drops)."""
    root = tmp_path_factory.mktemp("mirrors")
    good, bad, recomp = root / "good", root / "bad", root / "recompressed"
    for d in (good, bad, recomp, root / "missing", root / "truncated"):
        d.mkdir()
    for src in sorted((shared_datasets / "mnist").glob("*.gz")):
        shutil.copyfile(src, good / src.name)
        blob = bytearray(src.read_bytes())
        blob[len(blob) // 2] ^= 0xFF  # one flipped byte: still served, must be rejected
        (bad / src.name).write_bytes(bytes(blob))
        raw = gzip.decompress(src.read_bytes())
        (recomp / src.name).write_bytes(gzip.compress(raw, compresslevel=1, mtime=12345))
    server = MirrorServer(root)
    try:
        yield server
    finally:
        server.stop()
