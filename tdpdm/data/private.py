"""The private training split, sealed until a privacy ledger charge covers reading it.

DESIGN 3.1: every read of private records is a mechanism on the ledger. So nothing in the
package gets the sensitive arrays except through `PrivateTrainingSet.open(grant)`, and a grant is
only valid while the ledger holds an open charge for this data set. Before that, the only thing
anyone may learn is the record count (from the labels file header), which DP-SGD treats as
public because it sets the sampling rate. Refusing a plan therefore reads no record at all.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from tdpdm.data.catalog import get_spec
from tdpdm.data.errors import DataError
from tdpdm.data.loader import check_split_headers, load_split


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
        dataset: str,
        data_dir: str,
        subset: int | None,
        subset_key: SecretStream | None = None,
    ) -> None:
        self.spec = get_spec(dataset)
        self.dataset = dataset
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

    def n_records(self) -> int:
        """Records that planning uses: min(subset, file count), from the header only (for a
        subset this is the expected size of the Poisson sample: public, fixed before reading)."""
        # Both headers are checked (dtype, shape, counts), so a malformed data set is refused
        # here, before any ledger charge; the items themselves stay sealed.
        total = check_split_headers(self.dataset, self.data_dir, "train")
        if total == 0:
            raise DataError(f"{self.dataset}: the training split at {self.data_dir} is empty")
        return total if self.subset is None else min(self.subset, total)

    def open(self, grant: AccessGrant) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (N, H, W) and labels int64 (N,); refused without an active grant."""
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
        images, labels = load_split(self.dataset, self.data_dir, "train")
        if len(images) == 0:
            raise DataError(f"{self.dataset}: the training split at {self.data_dir} is empty")
        if self._subset_key is not None and self.subset is not None and self.subset < len(images):
            # one independent draw per record, in file order
            keep = self._subset_key.numpy().random(len(images)) < self.subset / len(images)
            images, labels = images[keep], labels[keep]
        return images, labels
