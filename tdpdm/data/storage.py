"""URI helpers over fsspec: one code path for local disks and object stores.

Data sets, checkpoints and latents may live on a local path or in S3/GCS (DESIGN.md §4), so
everything that touches storage goes through these few functions. They accept only the schemes
the project supports (a URI from a config file is untrusted input), refuse path traversal when
joining names, and turn every storage failure into one-line DataError without credentials.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import BinaryIO
from urllib.parse import SplitResult, urlsplit

import fsspec

from tdpdm.data.errors import DataError

#: Schemes accepted by :func:`resolve`; "" is a plain local path.
ALLOWED_SCHEMES = frozenset({"", "file", "s3", "gs", "memory"})

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_CHUNK = 8 << 20
_EXTRA = {"s3": "s3fs (pip install 'tdpdm[s3]')", "gs": "gcsfs (pip install gcsfs)"}


def scheme_of(uri: str) -> str:
    """The URI scheme in lower case, or "" for a plain local path."""
    m = _SCHEME_RE.match(uri)
    return m.group(1).lower() if m else ""


def redact(uri: str) -> str:
    """The URI without user-info or query string, which may carry secrets (signed URLs).

    Cut by hand, never by urlsplit: it raises on some hostile URIs, and a secret holding a
    literal '/' (AWS secret keys do) would end its netloc early and leave the secret in the path.
    """
    if not scheme_of(uri):
        return uri
    scheme, _, rest = uri.partition(":")
    body = rest.split("?", 1)[0].split("#", 1)[0]
    hidden = len(body) != len(rest)
    slashes = "//" if body.startswith("//") else ""
    body = body[len(slashes) :]
    authority = body.split("/", 1)[0]
    at = body.rfind("@")
    if "@" in authority:
        body, hidden = body[authority.rfind("@") + 1 :], True
    elif at >= 0 and ":" in body[:at]:  # user:secret/with/slashes@host
        body, hidden = body[at + 1 :], True
    return f"{scheme}:{slashes}{body}" if hidden else uri


def scrub_secrets(text: object) -> str:
    """Error text from storage libraries with any credential values from the env removed."""
    out = str(text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, "***")
    return out


def _fail(uri: str, problem: str, exc: BaseException | None = None) -> DataError:
    detail = f" ({type(exc).__name__}: {scrub_secrets(exc)})" if exc is not None else ""
    return DataError(f"{redact(uri)}: {problem}{detail}")


def _check_uri(uri: object) -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise DataError(f"{uri!r}: not a usable path or URI (empty or not a string)")
    if "\x00" in uri:
        raise DataError(f"{uri!r}: path contains a NUL byte")
    scheme = scheme_of(uri)
    if scheme not in ALLOWED_SCHEMES:
        allowed = ", ".join(f"{s}://" for s in sorted(ALLOWED_SCHEMES - {""}))
        raise DataError(
            f"{redact(uri)}: unsupported URI scheme {scheme!r}; use a local path or {allowed}"
        )
    return scheme


def s3_region() -> str | None:
    """`AWS_REGION` when `AWS_DEFAULT_REGION` is unset: botocore reads only the latter, while
    the AWS CLI v2, the other SDKs and container platforms set the former."""
    if os.environ.get("AWS_DEFAULT_REGION"):
        return None  # botocore finds it itself
    return os.environ.get("AWS_REGION") or None


def _s3_kwargs() -> dict[str, object]:
    """Endpoint and region overrides for S3-compatible stores (MinIO, Ceph, moto); s3fs (via
    botocore) reads credentials and everything else from the usual AWS env and config."""
    client_kwargs: dict[str, object] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = s3_region()
    if region:
        client_kwargs["region_name"] = region
    return {"client_kwargs": client_kwargs} if client_kwargs else {}


def _split(uri: str) -> SplitResult:
    try:
        return urlsplit(uri)
    except ValueError as exc:
        raise DataError(f"{redact(uri)}: malformed URI ({exc})") from None


def resolve(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and filesystem-native path for a local path or supported URI."""
    scheme = _check_uri(uri)
    if scheme in ("", "file"):
        path = uri
        if scheme == "file":
            parts = _split(uri)
            if parts.netloc not in ("", "localhost"):
                raise DataError(f"{redact(uri)}: file:// URIs must not name a remote host")
            path = parts.path
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    if scheme in ("s3", "gs") and not _split(uri).netloc:
        raise DataError(f"{redact(uri)}: URI has no bucket name")
    kwargs = _s3_kwargs() if scheme == "s3" else {}
    try:
        fs = fsspec.filesystem(scheme, **kwargs)
    except ImportError as exc:
        raise DataError(f"{redact(uri)}: {scheme}:// needs {_EXTRA.get(scheme, scheme)}") from exc
    return fs, fs._strip_protocol(uri)


def local_path(uri: str) -> str | None:
    """Absolute local path when the URI is on the local disk, else None (object store)."""
    scheme = _check_uri(uri)
    return resolve(uri)[1] if scheme in ("", "file") else None


def join(uri: str, *parts: str) -> str:
    """Append relative names to a base URI; refuse anything that could escape the base."""
    _check_uri(uri)
    segments: list[str] = []
    for part in parts:
        if not isinstance(part, str) or not part:
            raise DataError(f"{redact(uri)}: empty or non-string path component {part!r}")
        if "\x00" in part or "\\" in part or "://" in part or part.startswith(("/", "~")):
            raise DataError(f"{redact(uri)}: path component {part!r} must be a relative name")
        pieces = [p for p in part.split("/") if p not in ("", ".")]
        if ".." in pieces:
            raise DataError(f"{redact(uri)}: path component {part!r} contains '..' (traversal)")
        segments.extend(pieces)
    if not segments:
        return uri
    sep = "" if uri.endswith("/") else "/"
    return uri + sep + "/".join(segments)


def _read_bounded(f: BinaryIO, limit: int) -> bytes:
    """Read up to limit bytes in chunks: f.read(limit) would allocate all of limit up front."""
    out = bytearray()
    while len(out) < limit:
        chunk = f.read(min(_CHUNK, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """Whole file contents; DataError when missing, unreadable or larger than max_bytes."""
    fs, path = resolve(uri)
    try:
        if max_bytes is not None:
            size = fs.size(path)
            if size is not None and size > max_bytes:
                raise _fail(uri, f"file is {size} bytes, more than the limit of {max_bytes}")
        with fs.open(path, "rb") as f:
            data = f.read() if max_bytes is None else _read_bounded(f, max_bytes + 1)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise _fail(uri, "not found") from exc
    except IsADirectoryError as exc:
        raise _fail(uri, "is a directory, not a file") from exc
    except PermissionError as exc:
        raise _fail(uri, "permission denied") from exc
    except Exception as exc:  # storage back ends raise many types (botocore, aiohttp, OSError)
        raise _fail(uri, "cannot read", exc) from exc
    if max_bytes is not None and len(data) > max_bytes:
        # The size query can be missing or stale; the bounded read is what counts.
        raise _fail(uri, f"file is larger than the limit of {max_bytes} bytes")
    return data


def read_head(uri: str, n: int) -> tuple[bytes, bool]:
    """The first `n` bytes of a file (one ranged read on an object store), and whether that is
    the whole file."""
    fs, path = resolve(uri)
    try:
        with fs.open(path, "rb") as f:
            head = _read_bounded(f, n + 1)
    except FileNotFoundError as exc:
        raise _fail(uri, "not found") from exc
    except IsADirectoryError as exc:
        raise _fail(uri, "is a directory, not a file") from exc
    except PermissionError as exc:
        raise _fail(uri, "permission denied") from exc
    except Exception as exc:
        raise _fail(uri, "cannot read", exc) from exc
    return head[:n], len(head) <= n


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_local(tmp_path: str, dest_path: str) -> None:
    """Durably move a finished temp file (same directory) over dest: readers see old or new."""
    with open(tmp_path, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp_path, dest_path)
    _fsync_dir(os.path.dirname(dest_path) or ".")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(uri: str, data: bytes, *, private: bool = False) -> None:
    """Write so that a reader never sees a partial file, even if this process dies midway.

    Local files get the usual permissions (0666 less the umask), or 0600 with `private`
    (custodian-only outputs); the temporary file is always 0600 until it is complete."""
    fs, path = resolve(uri)
    lpath = local_path(uri)
    try:
        if lpath is None:
            fs.pipe_file(path, bytes(data))  # one PUT (or multipart commit): atomic by design
            return
        parent = os.path.dirname(lpath)
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(lpath)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600 if private else 0o666 & ~_umask())
            os.replace(tmp, lpath)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(parent)
    except Exception as exc:
        raise _fail(uri, "cannot write", exc) from exc


def remove_tree(uri: str) -> None:
    """Delete a directory (or object-store prefix) and everything under it; absent is fine."""
    fs, path = resolve(uri)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        return
    except Exception as exc:
        raise _fail(uri, "cannot delete", exc) from exc


def exists(uri: str) -> bool:
    """Whether a file or directory exists at the URI."""
    fs, path = resolve(uri)
    try:
        return bool(fs.exists(path))
    except Exception as exc:
        raise _fail(uri, "cannot check existence", exc) from exc


def isdir(uri: str) -> bool:
    """Whether the URI names a directory (or a non-empty prefix on an object store)."""
    fs, path = resolve(uri)
    try:
        return bool(fs.isdir(path))
    except Exception as exc:
        raise _fail(uri, "cannot check directory", exc) from exc


def makedirs(uri: str) -> None:
    """Create a directory and its parents; a no-op where it exists or stores have no dirs."""
    fs, path = resolve(uri)
    try:
        fs.makedirs(path, exist_ok=True)
    except Exception as exc:
        raise _fail(uri, "cannot create directory", exc) from exc


def list_entries(uri: str) -> list[tuple[str, bool]]:
    """Sorted (name, is_directory) of the entries directly inside a directory, in one listing
    (an object store answers one request, not one per entry)."""
    fs, path = resolve(uri)
    try:
        fs.invalidate_cache(path)  # a listing cached earlier in this process may be stale
        if not fs.isdir(path):
            problem = "not a directory" if fs.exists(path) else "directory not found"
            raise _fail(uri, problem)
        entries = fs.ls(path, detail=True)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise _fail(uri, "directory not found") from exc
    except Exception as exc:
        raise _fail(uri, "cannot list directory", exc) from exc
    out: dict[str, bool] = {}
    for e in entries:
        full = str(e.get("name", "")).rstrip("/")
        name = full.rsplit("/", 1)[-1]
        if name and full != path.rstrip("/"):  # some stores list the prefix itself
            out[name] = e.get("type") == "directory"
    return sorted(out.items())


def listdir(uri: str) -> list[str]:
    """Sorted entry names (not full paths) directly inside a directory (`list_entries`'s
    listing: fresh, and without the prefix itself that some stores list)."""
    return [name for name, _ in list_entries(uri)]
