"""The private training split stays sealed unless an open ledger charge covers the read."""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from privacy_support import DELTA

import tdpdm.data.private as private
from tdpdm.data.errors import DataError
from tdpdm.data.private import PrivateAccessError, PrivateTrainingSet
from tdpdm.privacy.events import PoissonGaussianEvent
from tdpdm.privacy.ledger import Ledger
from tdpdm.privacy.session import LedgerGrant, PrivacySession

PLAN = [PoissonGaussianEvent(2.0, 0.05, 10, "encoder")]


class Sealed(AssertionError):
    """Raised by the stand-in loader: reaching it means records were about to be read."""


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(str(tmp_path / "ledger.json"))
    for name in ("mnist", "fashion-mnist"):
        ledger.set_budget(name, 10.0, DELTA, "add_remove")
    return ledger


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record (and allow) every call of the real loader made through the private module."""
    calls: list[tuple] = []
    real = private.load_split

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(private, "load_split", recording)
    return calls


def _records(shared_datasets: Path, subset: int | None = 500, seed: int = 3) -> PrivateTrainingSet:
    return PrivateTrainingSet("mnist", str(shared_datasets), subset, seed)


def test_open_with_an_open_charge_reads_the_subset(
    shared_datasets: Path, ledger: Ledger, loads: list
) -> None:
    session = PrivacySession.begin(ledger, "mnist", "job", PLAN)
    records = _records(shared_datasets)
    images, labels = records.open(session.grant)
    assert images.shape == (500, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (500,) and labels.dtype == np.int64
    assert set(np.unique(labels)) <= set(range(10))
    assert len(loads) == 1 and records.reads == 1
    # The subset is a seeded choice of positions: same seed, same records; other seed, others.
    again, _ = _records(shared_datasets).open(session.grant)
    other, _ = _records(shared_datasets, seed=4).open(session.grant)
    assert np.array_equal(images, again)
    assert not np.array_equal(images, other)


def test_open_without_a_grant_is_refused(shared_datasets: Path, loads: list) -> None:
    records = _records(shared_datasets)
    for not_a_grant in (None, "charge-id", object()):
        with pytest.raises(PrivateAccessError, match="grant"):
            records.open(not_a_grant)  # type: ignore[arg-type]
    assert loads == [] and records.reads == 0


def test_grant_for_another_dataset_is_refused(
    shared_datasets: Path, ledger: Ledger, loads: list
) -> None:
    session = PrivacySession.begin(ledger, "fashion-mnist", "job", PLAN)
    assert session.grant.is_active()
    with pytest.raises(PrivateAccessError, match="fashion-mnist"):
        _records(shared_datasets).open(session.grant)
    assert loads == []


def test_grant_naming_a_dataset_its_charge_is_not_for_is_refused(
    shared_datasets: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def sealed(*args, **kwargs):
        raise Sealed("records were read")

    monkeypatch.setattr(private, "load_split", sealed)
    fashion = PrivacySession.begin(ledger, "fashion-mnist", "job", PLAN)
    forged = LedgerGrant(ledger, "mnist", fashion.charge.charge_id)
    with pytest.raises(PrivateAccessError):
        _records(shared_datasets).open(forged)


@pytest.mark.parametrize("close", ["settle", "cancel"])
def test_grant_of_a_closed_charge_is_refused(
    shared_datasets: Path, ledger: Ledger, loads: list, close: str
) -> None:
    session = PrivacySession.begin(ledger, "mnist", "job", PLAN)
    grant = session.grant
    if close == "settle":
        session.settle("done")
    else:
        session.cancel_unread("not needed")
    assert not grant.is_active()
    with pytest.raises(PrivateAccessError, match="not open"):
        _records(shared_datasets).open(grant)
    assert loads == []


def test_grant_of_an_unknown_charge_is_refused(shared_datasets: Path, ledger: Ledger) -> None:
    @dataclass(frozen=True)
    class SelfMadeGrant:
        dataset: str = "mnist"
        charge_id: str = "made-up"

        def is_active(self) -> bool:
            return ledger.is_open(self.charge_id)

    with pytest.raises(Exception, match="no charge"):
        _records(shared_datasets).open(SelfMadeGrant())


def test_n_records_reads_only_the_header(
    shared_datasets: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def sealed(*args, **kwargs):
        raise Sealed("records were read")

    monkeypatch.setattr(private, "load_split", sealed)
    assert PrivateTrainingSet("mnist", str(shared_datasets), None, 0).n_records() == 60000
    assert _records(shared_datasets, subset=1500).n_records() == 1500
    assert _records(shared_datasets, subset=10**6).n_records() == 60000
    # ... while open() really goes through the loader (so the stand-in above is meaningful).
    session = PrivacySession.begin(ledger, "mnist", "job", PLAN)
    with pytest.raises(Sealed):
        _records(shared_datasets).open(session.grant)


def test_bad_subset_and_missing_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="subset"):
        PrivateTrainingSet("mnist", str(tmp_path), 0, 0)
    with pytest.raises(DataError, match="missing"):
        PrivateTrainingSet("mnist", str(tmp_path), 10, 0).n_records()


def test_n_records_rejects_a_file_that_is_not_a_labels_file(
    shared_datasets: Path, tmp_path: Path
) -> None:
    for src in (shared_datasets / "mnist").glob("train-*.gz"):
        shutil.copyfile(src, tmp_path / src.name)
    # An images file where the labels file should be: header says 3 dimensions, not 1.
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 12)
    )
    with pytest.raises(DataError, match="labels"):
        PrivateTrainingSet("mnist", str(tmp_path), None, 0).n_records()
