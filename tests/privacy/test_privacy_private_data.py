"""The private training split stays sealed unless an open ledger charge covers the read."""

from __future__ import annotations

import gzip
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from privacy_support import DELTA

import tdpdm.data.sources as sources
from tdpdm.config import load_config
from tdpdm.data.errors import DataError
from tdpdm.data.private import PrivateAccessError, PrivateTrainingSet
from tdpdm.pipeline import training_set
from tdpdm.privacy.events import PoissonGaussianEvent
from tdpdm.privacy.ledger import Ledger
from tdpdm.privacy.randomness import MechanismKey
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
    """Record (and allow) every call of the real loader made by the built-in (IDX) source."""
    calls: list[tuple] = []
    real = sources.load_split

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, "load_split", recording)
    return calls


def _records(shared_datasets: Path, subset: int | None = 500, key: int = 3) -> PrivateTrainingSet:
    """A subset with a fixed (test-only) secret key: `key` is the key itself, not a seed."""
    subset_key = MechanismKey("subset", key) if subset is not None else None
    return PrivateTrainingSet("mnist", str(shared_datasets), subset, subset_key=subset_key)


def test_open_with_an_open_charge_reads_the_subset(
    shared_datasets: Path, ledger: Ledger, loads: list
) -> None:
    session = PrivacySession.begin(ledger, "mnist", "job", PLAN)
    records = _records(shared_datasets)
    images, labels = records.open(session.grant)
    # A Poisson subset of the 60000 records at rate 500/60000: its size is random (sd ~ 22).
    assert abs(len(images) - 500) < 120 and len(labels) == len(images)
    assert images.shape[1:] == (28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert set(np.unique(labels)) <= set(range(10))
    assert len(loads) == 1 and records.reads == 1
    # The subset is a function of the secret key: same key, same records; other key, others.
    again, _ = _records(shared_datasets).open(session.grant)
    other, _ = _records(shared_datasets, key=4).open(session.grant)
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

    monkeypatch.setattr(sources, "load_split", sealed)
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

    monkeypatch.setattr(sources, "load_split", sealed)
    assert PrivateTrainingSet("mnist", str(shared_datasets), None).n_records() == 60000
    # A subset plans with its expected size m (public), never the realised one.
    assert _records(shared_datasets, subset=1500).n_records() == 1500
    assert _records(shared_datasets, subset=10**6).n_records() == 60000
    # ... while open() really goes through the loader (so the stand-in above is meaningful).
    session = PrivacySession.begin(ledger, "mnist", "job", PLAN)
    with pytest.raises(Sealed):
        _records(shared_datasets).open(session.grant)


def test_bad_subset_and_missing_data(tmp_path: Path) -> None:
    key = MechanismKey("subset", 0)
    with pytest.raises(DataError, match="subset"):
        PrivateTrainingSet("mnist", str(tmp_path), 0, subset_key=key)
    with pytest.raises(DataError, match="missing"):
        PrivateTrainingSet("mnist", str(tmp_path), 10, subset_key=key).n_records()


@pytest.mark.parametrize("subset_key", [None, 3, np.random.default_rng(3)])
def test_a_subset_needs_a_secret_key(tmp_path: Path, subset_key: object) -> None:
    """No key, a number (a seed) or a plain generator: refused before any file is looked at."""
    with pytest.raises(ValueError, match="secret key"):
        PrivateTrainingSet("mnist", str(tmp_path), 10, subset_key=subset_key)  # type: ignore[arg-type]


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
        PrivateTrainingSet("mnist", str(tmp_path), None).n_records()


# A subset is a per-record Poisson draw (DESIGN 3.9): each record is kept by its own draw from
# the secret key, so adding a record moves no other record in or out by itself, the realised
# size is random around m, and a fresh key (what every run gets) draws another subset.

N_SMALL, M_SMALL = 2000, 1000


def _idx(arr: np.ndarray) -> bytes:
    """IDX bytes (uint8 payload) for an array."""
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _numbered_split(where: Path, n: int) -> Path:
    """A train split of `n` records whose image carries its own position (pixels 0 and 1)."""
    ids = np.arange(n)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = ids % 256, ids // 256
    where.mkdir(parents=True)
    (where / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (where / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_idx((ids % 10).astype(np.uint8)))
    )
    return where


def _kept(records: PrivateTrainingSet, grant) -> np.ndarray:
    """Positions (in the file) of the records the subset kept."""
    images, labels = records.open(grant)
    ids = images[:, 0, 0].astype(np.int64) + 256 * images[:, 0, 1].astype(np.int64)
    assert np.array_equal(labels, ids % 10)  # each image kept with its own label
    return ids


@pytest.fixture
def open_grant(ledger: Ledger):
    return PrivacySession.begin(ledger, "mnist", "job", PLAN).grant


def test_subset_roles_are_independent_per_record(tmp_path: Path, open_grant) -> None:
    """Same key, the data set with one more record: every other record keeps its own draw.

    The rate is m / N, so it drops from m/n to m/(n+1) when a record is added: a record kept
    with n + 1 records was kept with n too, and only those whose draw lies between the two rates
    (about m/(n+1) = 0.5 records) drop out. A permutation of positions would reshuffle about
    half of them."""
    key = MechanismKey("subset", 7)
    small = _numbered_split(tmp_path / "n", N_SMALL)
    larger = _numbered_split(tmp_path / "n+1", N_SMALL + 1)
    kept_n = _kept(PrivateTrainingSet("mnist", str(small), M_SMALL, subset_key=key), open_grant)
    kept_more = _kept(PrivateTrainingSet("mnist", str(larger), M_SMALL, subset_key=key), open_grant)
    others = kept_more[kept_more < N_SMALL]
    assert np.isin(others, kept_n).all()
    assert len(np.setdiff1d(kept_n, others)) <= 5
    # And kept records come in file order, each at most once.
    assert np.array_equal(kept_n, np.unique(kept_n))


def test_subset_size_is_random_around_m(tmp_path: Path, open_grant) -> None:
    """Independent Bernoulli(m/N) draws: the size is Binomial(N, m/N) (here sd 22), not m."""
    data = str(_numbered_split(tmp_path / "d", N_SMALL))
    sizes = [
        len(
            _kept(
                PrivateTrainingSet("mnist", data, M_SMALL, subset_key=MechanismKey("s", k)),
                open_grant,
            )
        )
        for k in range(8)
    ]
    assert all(abs(size - M_SMALL) < 5 * 22.4 for size in sizes), sizes
    assert len(set(sizes)) > 1, sizes  # a fixed-size choice of positions gives m every time
    assert abs(np.mean(sizes) - M_SMALL) < 5 * 22.4 / np.sqrt(len(sizes)), sizes


def test_fresh_keys_draw_different_subsets(tmp_path: Path, open_grant) -> None:
    """The product's own path (`training_set`): the same config, seed included, twice; each
    gets a fresh key from OS entropy, so the two subsets differ (with a seed-derived key they
    would be equal, and anyone knowing the published seed would know who was left out)."""
    data = str(_numbered_split(tmp_path / "d", N_SMALL))
    cfg = load_config(None, {"subset": M_SMALL, "seed": 0, "dataset": "mnist"})
    first, second = (_kept(training_set(cfg, data), open_grant) for _ in range(2))
    assert abs(len(first) - M_SMALL) < 5 * 22.4
    assert not np.array_equal(first, second)
    # Different in many records, not one: independent draws agree on about half of the roles.
    roles = np.zeros((2, N_SMALL), dtype=bool)
    roles[0, first], roles[1, second] = True, True
    assert 0.4 < (roles[0] != roles[1]).mean() < 0.6
