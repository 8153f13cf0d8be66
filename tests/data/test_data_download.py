"""Downloading from mirrors, against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest
from tdpdm_test_support import free_port

from tdpdm.data import storage
from tdpdm.data.catalog import get_spec
from tdpdm.data.download import download, ensure_dataset, missing_files
from tdpdm.data.errors import DataError
from tdpdm.data.loader import load_split

SPEC = get_spec("mnist")
GZ_NAMES = sorted(f"{n}.gz" for n in SPEC.files.values())


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"


def test_download_from_good_mirror(mirror, tmp_path):
    mirror.requests.clear()
    dest = tmp_path / "mnist"
    out = download("mnist", str(dest), mirrors=[mirror.url("good")], progress=False)
    assert out == str(dest)
    assert sorted(p.name for p in dest.iterdir()) == GZ_NAMES  # no temp files left
    for key, name in SPEC.files.items():
        assert _sha(dest / f"{name}.gz") == SPEC.sha256[key]
    assert len(mirror.requests) == 4
    x, y = load_split("mnist", str(dest), "test")
    assert x.shape == (10_000, 28, 28) and len(np.unique(y)) == 10

    # Second call: everything present and verified, nothing fetched.
    mirror.requests.clear()
    download("mnist", str(dest), mirrors=[mirror.url("good")], progress=False)
    assert mirror.requests == []


def test_corrupted_mirror_rejected_next_mirror_used(mirror, tmp_path):
    mirror.requests.clear()
    mirrors = [
        mirror.url("bad"),
        mirror.url("missing"),
        mirror.url("truncated"),
        mirror.url("good"),
    ]
    download("mnist", str(tmp_path), mirrors=mirrors, progress=True)
    for key, name in SPEC.files.items():
        assert _sha(tmp_path / f"{name}.gz") == SPEC.sha256[key]
    assert sorted(p.name for p in tmp_path.iterdir()) == GZ_NAMES
    for sub in ("bad", "missing", "truncated", "good"):
        assert sum(r.startswith(f"/{sub}/") for r in mirror.requests) == 4


def test_recompressed_mirror_accepted_by_content_checksum(mirror, tmp_path):
    download("mnist", str(tmp_path), mirrors=[mirror.url("recompressed")], progress=False)
    for key, name in SPEC.files.items():
        digest = _sha(tmp_path / f"{name}.gz")
        assert digest != SPEC.sha256[key]  # other gzip bytes ...
    x, _ = load_split("mnist", str(tmp_path), "train")  # ... same data
    assert x.shape == (60_000, 28, 28)


def test_all_mirrors_bad(mirror, tmp_path):
    mirrors = [mirror.url("missing"), _closed_port_url(), mirror.url("bad")]
    with pytest.raises(DataError) as ei:
        download("mnist", str(tmp_path / "d"), mirrors=mirrors, progress=False)
    msg = str(ei.value)
    assert "train-images-idx3-ubyte.gz" in msg and "all 3 mirror" in msg
    assert "last error" in msg and "sha256 mismatch" in msg
    assert "\n" not in msg
    assert list((tmp_path / "d").iterdir()) == []  # rejected file not kept, no temp files


def test_wrong_existing_file_is_replaced(mirror, tmp_path):
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the real file")
    download("mnist", str(tmp_path), mirrors=[mirror.url("good")], progress=False)
    assert _sha(tmp_path / "t10k-labels-idx1-ubyte.gz") == SPEC.sha256["test-labels"]


def test_download_to_memory_uri(mirror):
    root = f"memory://tdpdm-dl-{uuid.uuid4().hex}"
    try:
        download("mnist", root, mirrors=[mirror.url("good")], progress=False)
        assert storage.listdir(root) == GZ_NAMES
        _, y = load_split("mnist", root, "test")
        assert len(y) == 10_000
    finally:
        fs, path = storage.resolve(root)
        fs.rm(path, recursive=True)


@pytest.mark.parametrize("bad", ["ftp://mirror.example/mnist/", "file:///etc/", "javascript:x"])
def test_mirror_scheme_rejected(tmp_path, bad):
    with pytest.raises(DataError, match="http"):
        download("mnist", str(tmp_path), mirrors=[bad], progress=False)


def test_no_mirrors(tmp_path):
    with pytest.raises(DataError, match="no mirrors"):
        download("mnist", str(tmp_path), mirrors=[], progress=False)


def test_ensure_dataset(mirror, shared_datasets, tmp_path):
    # Present (shared copy, dataset subfolder layout): returned as is, nothing fetched.
    mirror.requests.clear()
    root = str(shared_datasets)
    assert ensure_dataset("mnist", root, download_if_missing=False) == root
    assert missing_files("fashion-mnist", root) == []

    # Missing and not allowed: says what is missing and how to get it.
    with pytest.raises(DataError) as ei:
        ensure_dataset("mnist", str(tmp_path), download_if_missing=False)
    msg = str(ei.value)
    assert "t10k-images-idx3-ubyte" in msg and "download_if_missing=True" in msg
    assert mirror.requests == []

    # Missing and allowed: downloaded.
    out = ensure_dataset(
        "mnist",
        str(tmp_path),
        download_if_missing=True,
        mirrors=[mirror.url("good")],
        progress=False,
    )
    assert out == str(tmp_path) and missing_files("mnist", out) == []
