"""A job's privacy session: its ledger charge, the grant that unseals data, and recording.

Stages never talk to the ledger directly; they get a `PrivacySession`, record each mechanism
that ran through it, and hand its `grant` to `PrivateTrainingSet.open`. The grant stays valid
only while the charge is open in the ledger, so a record can never be read outside a charge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tdpdm.privacy.events import Event
from tdpdm.privacy.ledger import Charge, Ledger


@dataclass(frozen=True)
class LedgerGrant:
    """Satisfies `tdpdm.data.private.AccessGrant`."""

    ledger: Ledger
    dataset: str
    charge_id: str

    def is_active(self) -> bool:
        return self.ledger.is_open(self.charge_id, dataset=self.dataset)


@dataclass
class PrivacySession:
    ledger: Ledger
    charge: Charge
    recorded: list[Event] = field(default_factory=list)

    @classmethod
    def begin(
        cls, ledger: Ledger, dataset: str, job_id: str, planned: Sequence[Event]
    ) -> PrivacySession:
        """Reserve the whole plan (BudgetExceededError before anything is read)."""
        return cls(ledger, ledger.reserve(dataset, job_id, planned))

    @property
    def grant(self) -> LedgerGrant:
        return LedgerGrant(self.ledger, self.charge.dataset, self.charge.charge_id)

    def record(self, event: Event) -> None:
        """Charge one mechanism that ran (must fit within the plan)."""
        self.charge = self.ledger.record(self.charge.charge_id, event)
        self.recorded.append(event)

    def settle(self, note: str = "") -> Charge:
        self.charge = self.ledger.settle(self.charge.charge_id, note)
        return self.charge

    def settle_at_full_plan(self, note: str) -> Charge:
        """Close a job that failed after reading records at its whole plan: what ran is not
        all it may have revealed (whether and how it failed can depend on the records)."""
        self.charge = self.ledger.record_rest_of_plan(self.charge.charge_id)
        return self.settle(note)

    def cancel_unread(self, note: str) -> Charge:
        """Release the reservation of a job that failed before reading any record."""
        self.charge = self.ledger.cancel(self.charge.charge_id, note)
        return self.charge
