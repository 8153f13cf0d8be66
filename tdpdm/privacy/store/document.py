"""The ledger document: its shape, how it is parsed, and what every store offers.

A store offers one operation that matters: `transact(fn)`, which reads the current document,
applies `fn` and writes the result, so that no two writers interleave (a budget is never
overspent by racing jobs) and a crash leaves either the old or the new document, never a torn
one. `fn` may run more than once on the object store: it must change nothing but the document.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
