"""Fixtures for tests against a real S3 endpoint (moto's server on 127.0.0.1, a free port).

`moto_endpoint` (session): the server process, stopped at the end even when tests fail.
`s3` (per test): a fresh bucket, and the AWS environment variables of this process pointed at
the endpoint with distinctive fake credentials (`moto_endpoint.SECRETS`) so that tests can grep
outputs for leaks. Reuse from another test folder with `pytest_plugins` or by importing
`moto_endpoint.start_moto`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from moto_endpoint import MotoEndpoint, start_moto

pytest.importorskip("botocore", reason="S3 tests need botocore (pip install 'tdpdm[s3]')")
pytest.importorskip("moto", reason="S3 tests need moto[server] (pip install 'tdpdm[dev]')")


@dataclass
class S3Bucket:
    """One empty bucket on the endpoint; `uri(...)` builds s3:// URIs inside it."""

    endpoint: MotoEndpoint
    name: str
    client: Any

    @property
    def env(self) -> dict[str, str]:
        return self.endpoint.env

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.name}", *parts])

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoEndpoint]:
    endpoint = start_moto(tmp_path_factory.mktemp("aws"))
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture
def s3(moto_endpoint: MotoEndpoint, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    from s3fs import S3FileSystem

    identity = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
    for key in identity:
        monkeypatch.delenv(key, raising=False)
    for key, value in moto_endpoint.env.items():
        monkeypatch.setenv(key, value)
    S3FileSystem.clear_instance_cache()  # no s3fs instance from another endpoint
    client = moto_endpoint.client()
    name = f"tdpdm-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return S3Bucket(moto_endpoint, name, client)
