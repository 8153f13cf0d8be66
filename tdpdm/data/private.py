"""The private training split, sealed until a privacy ledger charge covers reading it.

DESIGN 3.1: every read of private records is a mechanism on the ledger. So nothing in the
package gets the sensitive arrays except through `PrivateTrainingSet.open(grant)`, and a grant is
only valid while the ledger holds an open charge for this data set. Before that, the only thing
anyone may learn is the source's public description (`DataSource.describe`: the record count,
which DP-SGD treats as public because it sets the sampling rate, the declared classes, the image
shape). Refusing a plan therefore reads no record at all.

The records come from a `tdpdm.data.sources.DataSource`: a built-in IDX data set (named as
before: `PrivateTrainingSet("mnist", data_dir, ...)`), an image folder, Parquet, `.npz` or
arrays in memory.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from tdpdm.data.errors import DataError
from tdpdm.data.sources import DataSource, IDXSource, SourceInfo
from tdpdm.data.units import bound_per_unit


class PrivateAccessError(PermissionError):
    """Private records were asked for without a valid ledger grant."""


@runtime_checkable
class AccessGrant(Protocol):
    """What the privacy layer hands over to unseal a data set (see `privacy.session`)."""

    dataset: str
    charge_id: str

    def is_active(self) -> bool: ...


@runtime_checkable
class SecretStream(Protocol):
    """Secret mechanism randomness (`tdpdm.privacy.randomness.MechanismKey` satisfies it)."""

    def numpy(self) -> np.random.Generator: ...


class PrivateTrainingSet:
    """A data set's training split, optionally a Poisson subset of it, read only under a grant.

    `subset=m` keeps each record independently with probability m / N (N the file's record
    count), from the secret `subset_key` (fresh OS entropy, never the public seed: the privacy
    layer draws it). A record's
    membership therefore never depends on the other records (a permutation of N positions would
    move many records in or out when one is added), and the planned count m is public while the
    realised one stays inside the process. Every record of the data set handed in is covered by
    the run's guarantee (being left out only helps; amplification by subsampling is not claimed).
    """

    def __init__(
        self,
        dataset: str | DataSource,
        data_dir: str | None = None,
        subset: int | None = None,
        subset_key: SecretStream | None = None,
        unit: str | None = None,
        per_unit: int = 1,
        unit_key: SecretStream | None = None,
    ) -> None:
        if isinstance(dataset, DataSource):
            self.source = dataset
        elif data_dir is None:
            raise ValueError("a built-in data set needs its data_dir")
        else:
            self.source = IDXSource(dataset, data_dir)
        self.dataset = self.source.name
        """The ledger's name for the data set: a grant must be for it."""
        self.data_dir = data_dir
        self.subset = subset
        self.reads = 0
        """Opens that started reading: from the first byte on, a charge can no longer be
        cancelled as unread."""
        self._subset_key = subset_key
        if subset is not None and subset < 1:
            raise DataError(f"subset must be a positive number of records, got {subset}")
        if subset is not None and not isinstance(subset_key, SecretStream):
            raise ValueError("a subset needs a secret key for its per-record draws")
        self.unit, self.per_unit, self._unit_key = unit, per_unit, unit_key
        """`unit`: where each record's privacy unit comes from (`tdpdm.data.units`); each unit
        keeps at most `per_unit` records, by draws from the secret `unit_key`."""
        if unit is not None and not isinstance(unit_key, SecretStream):
            raise ValueError("a privacy unit needs a secret key for its per-unit choice")
        self._kept_units: np.ndarray | None = None
        """Custodian-side only (tests check the bound with it): the unit ids of the records
        kept. Never logged, reported or written."""

    def describe(self) -> SourceInfo:
        """The source's public description, after its structural checks (no record read)."""
        info = self.source.describe()
        if self.unit is not None:
            self.source.check_units(self.unit)  # the column or array exists: structure only
        return info

    def n_records(self) -> int:
        """Records that planning uses: min(subset, record count), from structure only (for a
        subset this is the expected size of the Poisson sample: public, fixed before reading)."""
        # The source checks structure (headers, listing, dtypes), so a malformed data set is
        # refused here, before any ledger charge; the items themselves stay sealed.
        total = self.describe().n_records
        return total if self.subset is None else min(self.subset, total)

    def open(self, grant: AccessGrant) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8, (N, H, W) grey or (N, 3, H, W) RGB, and labels int64 (N,); refused
        without an active grant."""
        if not isinstance(grant, AccessGrant):
            raise PrivateAccessError("reading private records needs a ledger grant")
        if grant.dataset != self.dataset:
            raise PrivateAccessError(
                f"grant is for data set {grant.dataset!r}, not {self.dataset!r}"
            )
        if not grant.is_active():
            raise PrivateAccessError(
                f"ledger charge {grant.charge_id} is not open; private records stay sealed"
            )
        self.reads += 1  # before the first byte: a failure from here on settles, never refunds
        images, labels = self.source.read()
        if len(images) == 0:
            raise DataError(f"{self.dataset}: the training set is empty")
        if images.shape[1] == 1:
            images = images[:, 0]  # grey stays (N, H, W), as the models have always taken it
        total = len(images)  # the public count: a subset's rate never depends on the bound
        units = None
        if self.unit is not None and self._unit_key is not None:
            # First, before any mechanism sees a record: at most per_unit records per unit.
            units = self.source.read_units(self.unit)
            keep = bound_per_unit(units, self.per_unit, self._unit_key.numpy())
            images, labels, units = images[keep], labels[keep], units[keep]
        if self._subset_key is not None and self.subset is not None and self.subset < total:
            # one independent draw per record, in file order, at the public rate subset / N
            keep = self._subset_key.numpy().random(len(images)) < self.subset / total
            images, labels = images[keep], labels[keep]
            units = None if units is None else units[keep]
        self._kept_units = units
        return images, labels
