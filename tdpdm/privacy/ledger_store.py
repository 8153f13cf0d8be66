"""Where the ledger document lives, and how it is changed safely.

A store offers one operation that matters: `transact(fn)`, which reads the current document,
applies `fn` and writes the result, so that no two writers interleave (a budget is never
overspent by racing jobs) and a crash leaves either the old or the new document, never a torn
one. The local store uses an exclusive `flock` on a side file, a temp file, fsync and
`os.replace`; the S3 store (`ledger_s3`, imported only when an `s3://` ledger is used) reads the
object's ETag and writes back with a conditional PUT, retrying when another writer won.
`fn` may run more than once on the object store: it must change nothing but the document.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Document = dict[str, Any]


class LedgerStoreError(RuntimeError):
    """The ledger cannot be read or written (unreadable file, corrupt JSON, bad location)."""


class LedgerStore(Protocol):
    location: str

    def read(self) -> Document: ...

    def transact(self, fn: Callable[[Document], T]) -> T:
        """Run `fn` on the current document under exclusion and persist what it leaves."""
        ...


def empty_document() -> Document:
    return {"format": "tdpdm-ledger", "version": 1, "datasets": {}}


def parse_document(raw: bytes, location: str) -> Document:
    """The ledger document in `raw` (empty means a new ledger); refuses anything else."""
    if not raw.strip():
        return empty_document()
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LedgerStoreError(
            f"ledger {location} is not valid JSON ({err}); not touching it"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != "tdpdm-ledger":
        raise LedgerStoreError(f"{location} is not a tdpdm ledger file; not touching it")
    return doc


class LocalFileStore:
    """A JSON file on local disk (or a shared POSIX volume that honours flock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def read(self) -> Document:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return empty_document()
        except OSError as err:
            raise LedgerStoreError(f"cannot read ledger {self.location}: {err.strerror}") from None
        return parse_document(raw, self.location)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise LedgerStoreError(f"cannot open ledger {self.location}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def transact(self, fn: Callable[[Document], T]) -> T:
        with self._locked():
            doc = self.read()
            result = fn(doc)
            self._write(doc)
            return result

    def _remove_orphans(self) -> None:
        """Delete temp files of writers killed before their rename. Only called under the
        lock, so no live writer owns one."""
        for orphan in self.path.parent.glob(f".{self.path.name}.*"):
            with contextlib.suppress(OSError):
                orphan.unlink()

    def _write(self, doc: Document) -> None:
        data = json.dumps(doc, indent=2, sort_keys=True).encode()
        self._remove_orphans()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def open_store(location: str) -> LedgerStore:
    """A store for a ledger path or URI: a local path, file://, or s3://bucket/key."""
    if location.startswith("file://"):
        location = location[len("file://") :]
    if "://" in location:
        scheme = location.split("://", 1)[0].lower()
        if scheme == "s3":
            from tdpdm.privacy.ledger_s3 import ObjectStoreLedgerStore

            return ObjectStoreLedgerStore(location)
        raise LedgerStoreError(
            f"ledger location scheme {scheme!r} is not supported; use a local path or "
            "s3://bucket/key"
        )
    return LocalFileStore(location)
