"""Storage URIs are untrusted input (they come from config files and flags): fuzz the checks.

`join` never produces a path outside its base; only the supported schemes resolve; a redacted
URI never carries user-info or a query string (where credentials and signatures live).
"""

from __future__ import annotations

import posixpath

import pytest
from fuzz_support import FUZZ, one_line
from hypothesis import given
from hypothesis import strategies as st

from tdpdm.data import storage
from tdpdm.data.errors import DataError

pytestmark = pytest.mark.timeout(300)

BASES = ["runs/out", "/tmp/tdpdm-base", "s3://bucket/prefix", "memory://fuzz/base/"]
PART = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="./\\~:%\x00ab", max_size=12),
    st.sampled_from(["..", "../x", "a/../../b", "/etc/passwd", "~root/.ssh", "a\\..\\b", "s3://x"]),
)


@FUZZ
@given(st.sampled_from(BASES), st.lists(PART, min_size=1, max_size=3))
def test_join_never_escapes_its_base(base: str, parts: list[str]) -> None:
    try:
        joined = storage.join(base, *parts)
    except DataError as err:
        assert one_line(str(err))
        return
    assert joined.startswith(base)
    tail = joined[len(base) :].lstrip("/")
    segments = tail.split("/") if tail else []
    assert ".." not in segments and "\x00" not in tail and "\\" not in tail
    if not storage.scheme_of(base):
        inside = posixpath.normpath(posixpath.join("/root", base, tail))
        assert inside.startswith(posixpath.normpath(posixpath.join("/root", base)))


@FUZZ
@given(
    scheme=st.one_of(
        st.from_regex(r"[A-Za-z][A-Za-z0-9+.-]{0,8}", fullmatch=True),
        st.sampled_from(["http", "https", "ftp", "hdfs", "javascript", "data", "jar", "zip"]),
    ),
    rest=st.text(max_size=20),
)
def test_only_supported_schemes_resolve(scheme: str, rest: str) -> None:
    uri = f"{scheme}://{rest}"
    supported = scheme.lower() in storage.ALLOWED_SCHEMES
    try:
        storage.resolve(uri)
    except DataError as err:
        assert one_line(str(err))
        if not supported and "\x00" not in uri:
            assert "unsupported URI scheme" in str(err), str(err)
        return
    assert supported, f"{uri!r} resolved although {scheme!r} is not supported"


@FUZZ
@given(
    user=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=20),
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/+", min_size=12, max_size=40),
    scheme=st.sampled_from(["s3", "gs", "memory", "https"]),
)
def test_redact_drops_credentials(user: str, secret: str, scheme: str) -> None:
    uri = f"{scheme}://{user}:{secret}@bucket/key?X-Amz-Signature={secret}&token={secret}"
    redacted = storage.redact(uri)
    assert user not in redacted and secret not in redacted
    assert redacted.endswith("bucket/key")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://example.com/mnist", "unsupported URI scheme 'http'"),
        ("ftp://host/x", "unsupported URI scheme"),
        ("javascript:alert(1)", "unsupported URI scheme"),
        ("file://evil.example/etc/passwd", "must not name a remote host"),
        ("s3:///no-bucket", "no bucket"),
        ("", "not a usable path"),
        ("data/x\x00y", "NUL byte"),
    ],
)
def test_odd_uris_get_one_clear_error(uri: str, problem: str) -> None:
    with pytest.raises(DataError, match=problem) as info:
        storage.resolve(uri)
    assert one_line(str(info.value))


@pytest.mark.parametrize("part", ["..", "../ledger.json", "a/../../b", "/etc/passwd", "~/x"])
def test_traversal_components_are_refused(part: str) -> None:
    with pytest.raises(DataError):
        storage.join("runs/out", part)
