"""The ledger as a local file: an exclusive `flock` on a side file, a temp file, fsync and
`os.replace` (a crash leaves the old or the new document)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from tdpdm.data import storage
from tdpdm.privacy.store.document import (
    Document,
    LedgerStoreError,
    empty_document,
    parse_document,
)

T = TypeVar("T")


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
        # temp file (same `.<name>.` prefix `_remove_orphans` sweeps), fsync, rename, fsync dir
        storage.write_bytes_atomic(str(self.path), data, private=True)
