"""The privacy ledger kept on an S3 endpoint (moto's server on loopback), by conditional writes."""

from __future__ import annotations

import json

import pytest
from moto_endpoint import SECRETS
from tdpdm_test_support import free_port

from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent
from tdpdm.privacy.ledger import BudgetExceededError, Ledger
from tdpdm.privacy.store import LedgerStoreError, LocalFileStore, open_store
from tdpdm.privacy.store.s3 import ObjectStoreLedgerStore

DS = "mnist"
DELTA = 1e-5
PLAN = [PoissonGaussianEvent(1.0, 0.01, 200, "stage1"), GaussianEvent(5.0, 1, "release")]


def test_open_store_picks_the_object_store_and_needs_a_key() -> None:
    store = open_store("s3://bucket/ledgers/ledger.json")
    assert isinstance(store, ObjectStoreLedgerStore)
    assert (store.bucket, store.key) == ("bucket", "ledgers/ledger.json")
    for bad in ("s3://bucket", "s3://bucket/", "s3://bucket/dir/", "s3:///ledger.json"):
        with pytest.raises(LedgerStoreError, match="s3://"):
            open_store(bad)


def test_ledger_round_trip_matches_a_local_ledger(s3, tmp_path) -> None:
    """The same operations on S3 and on local disk give the same ledger and the same epsilon."""
    remote, local = Ledger(s3.uri("ledger.json")), Ledger(str(tmp_path / "ledger.json"))
    assert isinstance(local.store, LocalFileStore)
    for ledger in (remote, local):
        assert ledger.budget(DS) is None  # no object yet: an empty ledger
        ledger.set_budget(DS, 4.0, DELTA, "add_remove")
        charge = ledger.reserve(DS, "job-1", PLAN)
        assert ledger.reserve(DS, "job-1", PLAN).charge_id == charge.charge_id  # resumed once
        ledger.record(charge.charge_id, PoissonGaussianEvent(1.0, 0.01, 120, "stage1"))
        ledger.settle(charge.charge_id, "done")
    assert s3.keys() == ["ledger.json"]
    doc = json.loads(s3.get("ledger.json"))
    assert doc["format"] == "tdpdm-ledger"
    [charge] = doc["datasets"][DS]["charges"]
    assert charge["status"] == "settled" and charge["spent"][0]["steps"] == 120
    assert remote.spent(DS).epsilon == pytest.approx(local.spent(DS).epsilon, abs=1e-12)
    assert remote.spent(DS).epsilon > 0


def test_refused_plan_leaves_the_object_unchanged(s3) -> None:
    ledger = Ledger(s3.uri("ledger.json"))
    ledger.set_budget(DS, 0.5, DELTA, "add_remove")
    before = s3.get("ledger.json")
    with pytest.raises(BudgetExceededError, match="no record was read"):
        ledger.reserve(DS, "greedy", [GaussianEvent(0.5, 1, "release")])
    assert s3.get("ledger.json") == before


def test_a_lost_race_is_retried_on_the_new_version(s3) -> None:
    """Another writer changes the object between our read and our write: our conditional PUT
    is refused (412) and the change is re-applied to the new version; nothing is lost."""
    uri = s3.uri("ledger.json")
    Ledger(uri).set_budget(DS, 4.0, DELTA, "add_remove")
    ours, theirs = ObjectStoreLedgerStore(uri), Ledger(ObjectStoreLedgerStore(uri))
    calls = []

    def reserve_with_interference(doc):
        calls.append(len(doc["datasets"][DS]["charges"]))
        if len(calls) == 1:  # the other job sneaks in after our read
            theirs.reserve(DS, "theirs", PLAN)
        doc["datasets"][DS].setdefault("notes", []).append("ours")
        return len(calls)

    assert ours.transact(reserve_with_interference) == 2
    assert calls == [0, 1]  # second attempt saw their charge
    doc = json.loads(s3.get("ledger.json"))
    assert [c["job_id"] for c in doc["datasets"][DS]["charges"]] == ["theirs"]
    assert doc["datasets"][DS]["notes"] == ["ours"]


def test_creating_the_ledger_twice_at_once_keeps_one(s3) -> None:
    """If-None-Match: two writers creating the object; the second re-reads and merges."""
    uri = s3.uri("new", "ledger.json")
    ours = ObjectStoreLedgerStore(uri)
    other = Ledger(ObjectStoreLedgerStore(uri))
    seen = []

    def create(doc):
        seen.append(sorted(doc["datasets"]))
        if len(seen) == 1:
            other.set_budget("fashion-mnist", 1.0, DELTA, "replace_one")
        doc["datasets"].setdefault(DS, {"charges": []})
        return None

    ours.transact(create)
    assert seen == [[], ["fashion-mnist"]]
    assert sorted(json.loads(s3.get("new/ledger.json"))["datasets"]) == ["fashion-mnist", DS]


def test_endless_contention_gives_up_with_one_line(s3) -> None:
    uri = s3.uri("ledger.json")
    Ledger(uri).set_budget(DS, 4.0, DELTA, "add_remove")
    other = Ledger(ObjectStoreLedgerStore(uri))
    store = ObjectStoreLedgerStore(uri, max_attempts=3, base_delay_s=0.001)
    n = iter(range(100))

    def always_beaten(doc):
        other.set_budget(DS, 5.0 + next(n), DELTA, "add_remove")
        doc["datasets"][DS]["budget"]["epsilon"] = 100.0

    with pytest.raises(LedgerStoreError, match="gave up after 3 attempts") as info:
        store.transact(always_beaten)
    assert "\n" not in str(info.value) and "s3://" in str(info.value)
    assert Ledger(uri).budget(DS).epsilon == 7.0  # only the other writer's changes landed


def test_corrupt_object_is_refused_and_untouched(s3) -> None:
    s3.put("ledger.json", b'{"format": "something-else"}')
    ledger = Ledger(s3.uri("ledger.json"))
    with pytest.raises(LedgerStoreError, match="not a tdpdm ledger"):
        ledger.set_budget(DS, 1.0, DELTA, "add_remove")
    assert s3.get("ledger.json") == b'{"format": "something-else"}'


def test_missing_bucket_is_a_one_line_error_without_secrets(s3) -> None:
    ledger = Ledger("s3://no-such-bucket-tdpdm/ledger.json")
    with pytest.raises(LedgerStoreError) as info:
        ledger.set_budget(DS, 1.0, DELTA, "add_remove")
    message = str(info.value)
    assert "NoSuchBucket" in message and "s3://no-such-bucket-tdpdm/ledger.json" in message
    assert "\n" not in message and not any(secret in message for secret in SECRETS)


def test_unreachable_endpoint_is_a_one_line_error(s3, monkeypatch) -> None:
    uri = s3.uri("ledger.json")
    Ledger(uri).set_budget(DS, 1.0, DELTA, "add_remove")
    before = s3.get("ledger.json")
    dead = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    with pytest.raises(LedgerStoreError) as info:
        Ledger(uri).reserve(DS, "job", PLAN)
    message = str(info.value)
    assert message.startswith(f"cannot read ledger {uri}") and "\n" not in message
    assert "EndpointConnectionError" in message or "Could not connect" in message
    assert not any(secret in message for secret in SECRETS)
    assert s3.get("ledger.json") == before  # the real ledger did not change


def test_region_endpoint_and_profile_come_from_the_usual_aws_settings(
    s3, monkeypatch, tmp_path
) -> None:
    from tdpdm.data import storage

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the S3-specific one wins
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[tdpdm-test]\naws_access_key_id = AKIAPROFILEKEY000001\n"
        "aws_secret_access_key = profile-secret-0000000000000000\n"
    )
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "tdpdm-test")

    store = ObjectStoreLedgerStore(s3.uri("ledger.json"))
    assert store.client.meta.region_name == "eu-west-3"
    assert store.client.meta.endpoint_url == s3.endpoint.url
    assert store.client._request_signer._credentials.access_key == "AKIAPROFILEKEY000001"
    Ledger(store).set_budget(DS, 1.0, DELTA, "add_remove")  # really talks to the endpoint
    assert json.loads(s3.get("ledger.json"))["datasets"][DS]["budget"]["epsilon"] == 1.0
    kwargs = storage._s3_kwargs()["client_kwargs"]
    assert kwargs == {"endpoint_url": s3.endpoint.url, "region_name": "eu-west-3"}
