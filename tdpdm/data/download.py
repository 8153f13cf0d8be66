"""Fetch a catalogued data set from its public mirrors, verified by checksum.

Mirrors are untrusted (the Fashion-MNIST one is plain HTTP): a file is kept only when its
sha256 matches the catalog, and it appears under its final name only after that check, by an
atomic rename, so a crash or a bad mirror never leaves a half-written or forged file in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlsplit

from tqdm import tqdm

from tdpdm.data import storage
from tdpdm.data.catalog import FILE_KEYS, DatasetSpec, get_spec
from tdpdm.data.errors import DataError
from tdpdm.data.idx import GZIP_MAGIC, gunzip_capped
from tdpdm.data.loader import find_file

#: No file of a supported data set comes near this; a mirror sending more is refused.
MAX_DOWNLOAD_BYTES = 256 << 20
_CHUNK = 1 << 20
_USER_AGENT = "tdpdm-data/0.1 (+python urllib)"


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _raw_matches(spec: DatasetSpec, key: str, blob: bytes) -> bool:
    """Whether a gzip blob decompresses to the catalogued IDX bytes (re-compressed copies)."""
    want = spec.raw_sha256.get(key)
    if not want or not blob.startswith(GZIP_MAGIC):
        return False
    try:
        raw = gunzip_capped(blob, source=spec.files[key], max_bytes=MAX_DOWNLOAD_BYTES)
    except DataError:
        return False
    return _sha256_hex(raw) == want


def verify_gz(spec: DatasetSpec, key: str, blob: bytes) -> bool:
    """Whether a gzip file is a known-good copy: a catalogued gzip or IDX sha256 matches."""
    return _sha256_hex(blob) in spec.accepted_gz_sha256(key) or _raw_matches(spec, key, blob)


def _present_ok(spec: DatasetSpec, dest_dir: str, key: str) -> bool:
    """Whether dest_dir already holds a verified copy (gzip, or raw IDX) of the file."""
    name = spec.files[key]
    gz_uri, raw_uri = storage.join(dest_dir, f"{name}.gz"), storage.join(dest_dir, name)
    try:
        if storage.exists(gz_uri):
            blob = storage.read_bytes(gz_uri, max_bytes=MAX_DOWNLOAD_BYTES)
            if verify_gz(spec, key, blob):
                return True
        if storage.exists(raw_uri) and spec.raw_sha256.get(key):
            raw = storage.read_bytes(raw_uri, max_bytes=MAX_DOWNLOAD_BYTES)
            return _sha256_hex(raw) == spec.raw_sha256[key]
    except DataError:
        return False  # unreadable or oversized: fetch a fresh copy over it
    return False


def _check_mirror(mirror: str) -> str:
    parts = urlsplit(mirror)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DataError(f"{storage.redact(mirror)}: mirror must be an http:// or https:// URL")
    return mirror if mirror.endswith("/") else mirror + "/"


def _fetch(url: str, tmp_path: str, *, timeout_s: float, progress: bool) -> bytes:
    """Stream a URL into tmp_path (fsynced) and return its contents."""
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with (
        open(tmp_path, "wb") as out,
        urllib.request.urlopen(req, timeout=timeout_s) as resp,  # scheme checked: http(s) only
    ):
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > MAX_DOWNLOAD_BYTES:
            raise DataError(f"{url}: {total} bytes, more than the limit of {MAX_DOWNLOAD_BYTES}")
        name = url.rsplit("/", 1)[-1]
        got = bytearray()
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
            while chunk := resp.read(_CHUNK):
                got += chunk
                if len(got) > MAX_DOWNLOAD_BYTES:
                    raise DataError(f"{url}: more than the limit of {MAX_DOWNLOAD_BYTES} bytes")
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and len(got) != total:
            raise DataError(f"{url}: truncated download, {len(got)} of {total} bytes")
        out.flush()
        os.fsync(out.fileno())
    return bytes(got)


def _download_one(
    spec: DatasetSpec, key: str, url: str, dest: str, *, timeout_s: float, progress: bool
) -> None:
    """Fetch one file, verify it, then move it into place; nothing is left behind on failure."""
    local = storage.local_path(dest)
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(local) if local else None,
        prefix=f".{os.path.basename(dest)}.",
        suffix=".part",
    )
    os.close(fd)
    try:
        blob = _fetch(url, tmp, timeout_s=timeout_s, progress=progress)
        if not verify_gz(spec, key, blob):
            raise DataError(
                f"{storage.redact(url)}: sha256 mismatch (got {_sha256_hex(blob)}), file rejected"
            )
        if local is not None:
            storage.replace_local(tmp, local)
        else:
            storage.write_bytes_atomic(dest, blob)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def download(
    dataset: str,
    dest_dir: str,
    *,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = 60,
    progress: bool = True,
) -> str:
    """Download the four gzip files of a data set into dest_dir (a path or URI); returns it.

    Files already present and verified are skipped; each missing one is tried on every
    mirror in order until one serves a copy whose checksum matches.
    """
    spec = get_spec(dataset)
    bases = [_check_mirror(m) for m in (spec.mirrors if mirrors is None else mirrors)]
    if not bases:
        raise DataError(f"{dataset}: no mirrors to download from")
    storage.makedirs(dest_dir)
    for key in FILE_KEYS:
        if _present_ok(spec, dest_dir, key):
            continue
        fname = f"{spec.files[key]}.gz"
        dest = storage.join(dest_dir, fname)
        last = ""
        for base in bases:
            url = base + fname
            try:
                _download_one(spec, key, url, dest, timeout_s=timeout_s, progress=progress)
                break
            except DataError as exc:
                last = str(exc)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last = f"{storage.redact(url)}: {type(exc).__name__}: {exc}"
        else:
            raise DataError(
                f"{fname}: download failed from all {len(bases)} mirror(s) of {dataset}; "
                f"last error: {last}"
            )
    return dest_dir


def missing_files(dataset: str, data_dir: str) -> list[str]:
    """Standard names of the data set's files that cannot be found under data_dir."""
    spec = get_spec(dataset)
    return [spec.files[k] for k in FILE_KEYS if find_file(spec, data_dir, k) is None]


def ensure_dataset(
    dataset: str,
    data_dir: str,
    *,
    download_if_missing: bool,
    mirrors: Sequence[str] | None = None,
    progress: bool = True,
) -> str:
    """data_dir when it holds the data set; else download it if allowed, or explain how."""
    spec = get_spec(dataset)
    missing = missing_files(dataset, data_dir)
    if not missing:
        return data_dir
    if download_if_missing:
        return download(dataset, data_dir, mirrors=mirrors, progress=progress)
    raise DataError(
        f"{storage.redact(data_dir)}: {dataset} files missing ({', '.join(missing)}); "
        f"allow downloading (download_if_missing=True, from {spec.mirrors[0]}) or copy the "
        f"four *-ubyte.gz files into {storage.redact(data_dir)}"
    )
