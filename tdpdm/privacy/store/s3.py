"""The ledger document as one object in S3 (or any S3-compatible store), changed by
compare-and-swap.

An object store has no locks, but it has conditional writes: a PUT with `If-Match: <etag>`
succeeds only if the object is still the version that was read, and `If-None-Match: *` only if
no object exists yet (AWS S3 since 2024, MinIO, Ceph RGW). `transact` reads the object and its
ETag, applies the change and writes it back on that condition; when another writer got in first
(412 PreconditionFailed, or 409 ConditionalRequestConflict while two writes are in flight) it
re-reads and tries again with jittered backoff, a bounded number of times. A PUT replaces the
whole object atomically, so a writer killed at any moment leaves the old or the new document.

Because of the retries `fn` may run more than once: it must change nothing but the document.

botocore (already needed by s3fs) talks to the store; it reads the endpoint, region and
credentials the usual AWS ways (`AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, `AWS_REGION`,
`AWS_PROFILE`, config files, instance or workload identity). Messages carry the redacted URI and
the error code, never credentials.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tdpdm.data.storage import redact, s3_region, scrub_secrets
from tdpdm.privacy.store.document import (
    Document,
    LedgerStoreError,
    empty_document,
    parse_document,
)

T = TypeVar("T")

#: Error codes meaning "someone else wrote first": re-read and retry.
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
#: If-Match on an object that was deleted meanwhile; retrying re-reads and recreates it.
_GONE_CODES = frozenset({"NoSuchKey", "404"})
_MAX_LEDGER_BYTES = 64 << 20


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an `s3://bucket/key` ledger URI; the key must name an object."""
    parts = urlsplit(uri)
    bucket = parts.netloc.rsplit("@", 1)[-1]
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not bucket:
        raise LedgerStoreError(f"ledger URI {redact(uri)} has no bucket (want s3://bucket/key)")
    if not key or key.endswith("/"):
        raise LedgerStoreError(
            f"ledger URI {redact(uri)} names no object; give a key such as "
            f"s3://{bucket}/ledger.json"
        )
    return bucket, key


class ObjectStoreLedgerStore:
    """A ledger kept as one JSON object, updated only by conditional PUTs."""

    def __init__(
        self,
        uri: str,
        *,
        client: Any = None,
        max_attempts: int = 40,
        base_delay_s: float = 0.05,
        max_delay_s: float = 2.0,
    ) -> None:
        self.bucket, self.key = parse_s3_uri(uri)
        self.location = redact(uri)
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._client = client

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """botocore S3 client, made on first use (no network or credentials needed before)."""
        if self._client is None:
            try:
                import botocore.session
                from botocore.config import Config
            except ImportError:
                raise LedgerStoreError(
                    f"ledger {self.location} is on S3, which needs botocore "
                    "(pip install 'tdpdm[s3]')"
                ) from None
            config = Config(
                connect_timeout=10,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
            )
            try:
                self._client = botocore.session.get_session().create_client(
                    "s3", region_name=s3_region(), config=config
                )
            except Exception as err:  # bad profile, bad endpoint URL, ...
                raise self._error("cannot set up the S3 client for", err) from None
        return self._client

    def _error(self, what: str, err: BaseException) -> LedgerStoreError:
        code = _error_code(err)
        detail = code or type(err).__name__
        text = " ".join(scrub_secrets(err).split())
        return LedgerStoreError(f"{what} ledger {self.location}: {detail} ({text})")

    def _get(self) -> tuple[Document, str | None]:
        """The document and its ETag; (empty ledger, None) when the object does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except LedgerStoreError:
            raise
        except Exception as err:
            if _error_code(err) in ("NoSuchKey", "404"):
                return empty_document(), None
            raise self._error("cannot read", err) from None
        try:
            raw = response["Body"].read(_MAX_LEDGER_BYTES + 1)
        except Exception as err:
            raise self._error("cannot read", err) from None
        finally:
            response["Body"].close()
        if len(raw) > _MAX_LEDGER_BYTES:
            raise LedgerStoreError(f"ledger {self.location} is larger than 64 MiB; not reading it")
        return parse_document(raw, self.location), response["ETag"]

    def _put(self, body: bytes, etag: str | None) -> bool:
        """Write if the object is still at `etag` (absent if None). False: someone else won."""
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=body,
                ContentType="application/json",
                **condition,
            )
        except Exception as err:
            code = _error_code(err)
            if code in CONFLICT_CODES or (etag is not None and code in _GONE_CODES):
                return False
            raise self._error("cannot write", err) from None
        return True

    # -- the store interface -----------------------------------------------------------------
    def read(self) -> Document:
        return self._get()[0]

    def transact(self, fn: Callable[[Document], T]) -> T:
        """Apply `fn` to the current document and persist the result by compare-and-swap."""
        for attempt in range(self.max_attempts):
            doc, etag = self._get()
            before = _canonical(doc)
            result = fn(doc)  # an exception here leaves the ledger as it was
            after = _canonical(doc)
            if after == before and etag is not None:
                return result  # nothing changed: the read version is the answer
            if self._put(after, etag):
                return result
            self._sleep(attempt)
        raise LedgerStoreError(
            f"ledger {self.location}: gave up after {self.max_attempts} attempts because other "
            "jobs kept changing it at the same time; nothing was written, retry later"
        )

    def _sleep(self, attempt: int) -> None:
        """Full-jitter exponential backoff: racing writers spread out instead of colliding."""
        cap = min(self.max_delay_s, self.base_delay_s * (2**attempt))
        time.sleep(random.uniform(0, cap))


def _canonical(doc: Document) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def _error_code(err: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for other failures)."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
