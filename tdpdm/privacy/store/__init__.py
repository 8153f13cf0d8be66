"""Where the ledger document lives: a local file (`local`) or one S3 object (`s3`, imported
only when an `s3://` ledger is used). `open_store` picks one for a location."""

from __future__ import annotations

from tdpdm.privacy.store.document import (
    Document,
    LedgerStore,
    LedgerStoreError,
    empty_document,
    parse_document,
)
from tdpdm.privacy.store.local import LocalFileStore

__all__ = [
    "Document",
    "LedgerStore",
    "LedgerStoreError",
    "LocalFileStore",
    "empty_document",
    "open_store",
    "parse_document",
]


def open_store(location: str) -> LedgerStore:
    """A store for a ledger path or URI: a local path, file://, or s3://bucket/key."""
    if location.startswith("file://"):
        location = location[len("file://") :]
    if "://" in location:
        scheme = location.split("://", 1)[0].lower()
        if scheme == "s3":
            from tdpdm.privacy.store.s3 import ObjectStoreLedgerStore

            return ObjectStoreLedgerStore(location)
        raise LedgerStoreError(
            f"ledger location scheme {scheme!r} is not supported; use a local path or "
            "s3://bucket/key"
        )
    return LocalFileStore(location)
