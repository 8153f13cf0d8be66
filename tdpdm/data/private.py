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


class PrivateTrainingSet:
    """A data set's training split, optionally a seeded subset of it, read only under a grant.

    The subset is drawn from a seeded permutation of record *positions*, not from their
    content, so choosing it is not itself a data-dependent mechanism.
    """

    def __init__(self, dataset: str, data_dir: str, subset: int | None, seed: int) -> None:
        self.spec = get_spec(dataset)
        self.dataset = dataset
        self.data_dir = data_dir
        self.subset = subset
        self.seed = seed
        self.reads = 0
        if subset is not None and subset < 1:
            raise DataError(f"subset must be a positive number of records, got {subset}")

    def n_records(self) -> int:
        """Records that training will see: min(subset, file count), from the header only."""
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
        images, labels = load_split(self.dataset, self.data_dir, "train")
        if len(images) == 0:
            raise DataError(f"{self.dataset}: the training split at {self.data_dir} is empty")
        self.reads += 1
        if self.subset is not None and self.subset < len(images):
            order = np.random.default_rng(self.seed).permutation(len(images))[: self.subset]
            order.sort()
            images, labels = images[order], labels[order]
        return images, labels
