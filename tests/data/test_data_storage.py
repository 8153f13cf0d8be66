"""Storage URIs: allowed schemes, traversal refusal, atomic writes, S3 via a real endpoint."""

from __future__ import annotations

import os
import uuid

import pytest

from tdpdm.data import storage
from tdpdm.data.errors import DataError


@pytest.fixture
def mem_root():
    root = f"memory://tdpdm-test-{uuid.uuid4().hex}"
    yield root
    fs, path = storage.resolve(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_memory_round_trip(mem_root):
    uri = storage.join(mem_root, "sub", "blob.bin")
    assert not storage.exists(uri)
    storage.makedirs(storage.join(mem_root, "sub"))
    storage.write_bytes_atomic(uri, b"hello")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"hello"
    storage.write_bytes_atomic(uri, b"again")
    assert storage.read_bytes(uri, max_bytes=5) == b"again"
    storage.write_bytes_atomic(storage.join(mem_root, "sub", "b2"), b"x")
    assert storage.listdir(storage.join(mem_root, "sub")) == ["b2", "blob.bin"]


def test_local_round_trip_is_atomic_and_leaves_no_temp_files(tmp_path):
    uri = str(tmp_path / "deep" / "dir" / "f.bin")
    storage.write_bytes_atomic(uri, b"1" * 100)
    storage.write_bytes_atomic(uri, b"2" * 10)
    assert storage.read_bytes(uri) == b"2" * 10
    assert os.listdir(tmp_path / "deep" / "dir") == ["f.bin"]
    assert storage.listdir(str(tmp_path / "deep")) == ["dir"]


def test_file_uri_and_local_path(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    assert storage.read_bytes(f"file://{tmp_path}/a.txt") == b"abc"
    assert storage.local_path(f"file://{tmp_path}/a.txt") == str(tmp_path / "a.txt")
    assert storage.local_path("memory://x/y") is None
    with pytest.raises(DataError, match="remote host"):
        storage.resolve("file://evil.example.com/etc/passwd")


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://example.com/x",
        "javascript:alert(1)",
        "http://example.com/train.gz",
        "https://example.com/train.gz",
        "data:text/plain,hi",
        "hdfs://nn/x",
    ],
)
def test_rejected_schemes(uri):
    with pytest.raises(DataError, match="unsupported URI scheme"):
        storage.resolve(uri)
    with pytest.raises(DataError, match="unsupported URI scheme"):
        storage.read_bytes(uri)


@pytest.mark.parametrize("bad", ["", None, "a\x00b"])
def test_unusable_uris(bad):
    with pytest.raises(DataError):
        storage.resolve(bad)


def test_join():
    assert storage.join("s3://bucket/base", "a", "b/c.gz") == "s3://bucket/base/a/b/c.gz"
    assert storage.join("s3://bucket/base/", "x") == "s3://bucket/base/x"
    assert storage.join("memory://", "x") == "memory://x"
    assert storage.join("/data", "./mnist", "f") == "/data/mnist/f"


@pytest.mark.parametrize(
    "part", ["..", "../etc", "a/../../b", "/etc/passwd", "~/x", "a\\..\\b", "s3://other/x", ""]
)
def test_join_refuses_escapes(part):
    with pytest.raises(DataError, match="component"):
        storage.join("/data", part)


def test_read_bytes_errors(tmp_path):
    with pytest.raises(DataError, match="not found") as ei:
        storage.read_bytes(str(tmp_path / "missing.gz"))
    assert str(tmp_path / "missing.gz") in str(ei.value)
    with pytest.raises(DataError, match="directory"):
        storage.read_bytes(str(tmp_path))
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(DataError, match="limit of 100"):
        storage.read_bytes(str(tmp_path / "big"), max_bytes=100)
    assert storage.read_bytes(str(tmp_path / "big"), max_bytes=101) == b"x" * 101


def test_listdir_errors(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(DataError, match="not a directory"):
        storage.listdir(str(tmp_path / "f"))
    with pytest.raises(DataError, match="not found"):
        storage.listdir(str(tmp_path / "nope"))


def test_redact_hides_userinfo_and_query():
    red = storage.redact("s3://AKIAXXXX:s3cr3t@bucket/key?X-Amz-Signature=abc")
    assert red == "s3://bucket/key"
    assert storage.redact("memory:///a/b") == "memory:///a/b"
    assert storage.redact("/local/p@th") == "/local/p@th"
    with pytest.raises(DataError) as ei:
        storage.resolve("ftp://user:hunter2@example.com/x")
    assert "hunter2" not in str(ei.value)


def test_gs_without_gcsfs_gives_clear_error():
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="gcsfs"):
            storage.resolve("gs://bucket/x")
    else:
        pytest.skip("gcsfs installed")


def test_s3_endpoint_from_env(monkeypatch):
    pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    fs, path = storage.resolve("s3://bucket/some/key")
    assert path == "bucket/some/key"
    assert fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:2"  # S3-specific wins
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    fs, _ = storage.resolve("s3://bucket/k")
    assert fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:1"
    with pytest.raises(DataError, match="no bucket"):
        storage.resolve("s3://")


@pytest.fixture
def moto_s3(monkeypatch):
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield
    finally:
        server.stop()


def test_s3_round_trip_against_real_endpoint(moto_s3):
    bucket = f"s3://tdpdm-{uuid.uuid4().hex[:12]}"
    storage.makedirs(bucket)
    uri = storage.join(bucket, "datasets", "mnist", "t.bin")
    storage.write_bytes_atomic(uri, b"payload")
    assert storage.exists(uri)
    assert storage.read_bytes(uri, max_bytes=100) == b"payload"
    assert storage.listdir(storage.join(bucket, "datasets", "mnist")) == ["t.bin"]
    with pytest.raises(DataError, match="not found") as ei:
        storage.read_bytes(storage.join(bucket, "missing"))
    assert "very-secret-value-123" not in str(ei.value)
