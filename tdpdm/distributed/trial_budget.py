"""How a stage-2 hyperparameter search spends one fixed budget (`private` mode).

Every trial is its own ledger charge: its plan is one DP-SGD segment plus the noisy selection
scores it may report. Trials all run the same mechanisms (the searched hyperparameters change
neither the sampling rate, the steps nor the noise), so the DP-SGD noise is calibrated once,
such that stage 1 composed with `budgeted_trials` full trial plans meets the run's epsilon.

Admission is the only gate: `TrialAdmission.reserve` composes stage 1, every earlier trial of
the run (open charges at their full plan, settled ones at what ran) and the new plan, and refuses
when that exceeds the run's target; the ledger then refuses when the data set's budget would be
exceeded. A refused trial never sees the data. A trial that ASHA stops early is settled at what
ran, which can leave room for one more trial: the total still never exceeds the budget.
Selection (ASHA and the final choice) reads only the noisy scores, so it is post-processing.
Nothing here imports Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tdpdm.config import RunConfig
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.calibration import calibrate_noise
from tdpdm.privacy.events import Event, GaussianEvent, PoissonGaussianEvent
from tdpdm.privacy.ledger import OPEN, BudgetExceededError, Charge, Ledger, LedgerError
from tdpdm.stages.dpsgd import DPSGDPlan

TRIAL_STAGE = "diffusion"
SCORE_STAGE = "tune_score"


def trial_job_prefix(run_id: str) -> str:
    return f"{run_id}-trial-"


def split_sizes(n_records: int, holdout_fraction: float) -> tuple[int, int]:
    """(training records, held-out scoring records); both parts are at least 1 record."""
    held = min(max(1, round(holdout_fraction * n_records)), n_records - 1)
    return n_records - held, held


@dataclass(frozen=True)
class TrialPlan:
    """What one trial may run: a DP-SGD segment (None on a DP release) and `reports` scores."""

    steps: int
    reports: int
    n_train: int
    n_holdout: int
    segment: DPSGDPlan | None = None
    score_noise: float | None = None

    @property
    def private(self) -> bool:
        return self.segment is not None

    def score_event(self, count: int = 1) -> GaussianEvent:
        if self.score_noise is None:
            raise ValueError("this trial plan has no noisy score")
        return GaussianEvent(noise_multiplier=self.score_noise, count=count, stage=SCORE_STAGE)

    def events(self) -> list[Event]:
        """The full plan reserved on the ledger (empty on a DP release: trials are free)."""
        if self.segment is None:
            return []
        return [self.segment.event(), self.score_event(self.reports)]

    def report_steps(self) -> list[int]:
        """The DP-SGD steps after which a score is reported (the last one is `steps`)."""
        return sorted(
            {max(1, round(self.steps * r / self.reports)) for r in range(1, 1 + self.reports)}
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "reports": len(self.report_steps()),
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "noise_multiplier": self.segment.noise_multiplier if self.segment else None,
            "sampling_rate": self.segment.sampling_rate if self.segment else None,
            "score_noise_multiplier": self.score_noise,
        }


@dataclass(frozen=True)
class Refusal:
    """Why a trial may not start. `retry`: other trials of the run still hold their full plans
    and may settle for less (ASHA stops them early), so asking again later can succeed."""

    reason: str
    retry: bool = False


def plan_trials(
    cfg: RunConfig,
    n_records: int,
    adjacency: Adjacency,
    delta: float,
    stage1_events: list[Event],
) -> TrialPlan:
    """Calibrate one trial so that stage 1 and `tune.budgeted_trials` trials meet cfg.epsilon.

    On a DP release (`released` mode) there is nothing to calibrate: trials are free."""
    t, s2 = cfg.tune, cfg.stage2
    n_train, n_holdout = split_sizes(n_records, t.holdout_fraction)
    if cfg.mode == "released":
        batch = min(s2.batch_size, n_train)
        steps = max(1, math.ceil(s2.epochs * n_train / batch))  # as the plain loop counts
        return TrialPlan(steps, t.reports, n_train, n_holdout)

    def segment(sigma: float) -> DPSGDPlan:
        return DPSGDPlan.from_epochs(
            TRIAL_STAGE,
            n_records=n_train,
            batch_size=s2.batch_size,
            epochs=s2.epochs,
            noise_multiplier=sigma,
            max_grad_norm=s2.max_grad_norm,
        )

    probe = TrialPlan(segment(1.0).steps, t.reports, n_train, n_holdout, segment(1.0), 1.0)
    reports = len(probe.report_steps())
    k = t.budgeted_trials
    scores = GaussianEvent(t.score_noise_multiplier, count=reports * k, stage=SCORE_STAGE)
    sigma = calibrate_noise(
        lambda s: [segment(s).event(steps=segment(s).steps * k)],
        cfg.epsilon,
        delta,
        adjacency,
        fixed_events=[*stage1_events, scores],
    )
    seg = segment(sigma)
    return TrialPlan(seg.steps, reports, n_train, n_holdout, seg, t.score_noise_multiplier)


class TrialAdmission:
    """Serialises the reservations of one run's trials (wrapped as a Ray actor by the tuner).

    The run's own target is checked here, atomically across trials because calls are
    serialised; the data set's budget is checked by the ledger, atomically across jobs."""

    def __init__(
        self,
        ledger: str,
        dataset: str,
        run_id: str,
        target_epsilon: float,
        delta: float,
        adjacency: str,
        stage1_events: list[Event],
    ) -> None:
        self.ledger = Ledger(ledger)
        self.dataset, self.run_id = dataset, run_id
        self.target, self.delta = target_epsilon, delta
        self.adjacency = Adjacency.parse(adjacency)
        self.stage1_events = list(stage1_events)

    def run_events(self) -> list[Event]:
        """Stage 1 plus what every trial of the run holds (open ones at their full plan)."""
        return [*self.stage1_events, *trial_events(self.ledger, self.dataset, self.run_id)]

    def reserve(self, job_id: str, planned: list[Event]) -> Charge | Refusal:
        """The trial's open charge, or why it is refused (it then must not read data)."""
        if not job_id.startswith(trial_job_prefix(self.run_id)):
            raise LedgerError(f"{job_id} is not a trial of run {self.run_id}")
        others_open = any(
            c.status == OPEN for c in trial_charges(self.ledger, self.dataset, self.run_id)
        )
        total = compute_epsilon([*self.run_events(), *planned], self.delta, self.adjacency)
        if total.epsilon > self.target:
            return Refusal(
                f"refused: this trial would bring run {self.run_id} to epsilon "
                f"{total.epsilon:.3f}, over its target {self.target:g}; no record was read",
                retry=others_open,
            )
        try:
            return self.ledger.reserve(self.dataset, job_id, planned)
        except BudgetExceededError as err:
            return Refusal(str(err), retry=others_open)


def trial_charges(ledger: Ledger, dataset: str, run_id: str) -> list[Charge]:
    prefix = trial_job_prefix(run_id)
    return [c for c in ledger.charges(dataset) if c.job_id.startswith(prefix)]


def trial_events(ledger: Ledger, dataset: str, run_id: str) -> list[Event]:
    return [e for c in trial_charges(ledger, dataset, run_id) for e in c.counted_events()]


def close_trial_charge(ledger: Ledger, charge: Charge, failed: bool, note: str) -> Charge:
    """Settle a trial's charge after its process is gone.

    A trial stopped at a report boundary recorded every step before reporting, so it settles
    at what ran. A failed one may have run steps it could not record: it is charged its full
    plan, never less than what may have run."""
    charge = _current(ledger, charge)  # the caller's copy may predate recent records
    if charge.status != OPEN:
        return charge
    if failed:
        for event in _unrecorded(charge):
            charge = ledger.record(charge.charge_id, event)
    try:
        return ledger.settle(charge.charge_id, note)
    except LedgerError:  # closed meanwhile by the trial itself
        return _current(ledger, charge)


def _current(ledger: Ledger, charge: Charge) -> Charge:
    return next(c for c in ledger.charges(charge.dataset) if c.charge_id == charge.charge_id)


def _unrecorded(charge: Charge) -> list[Event]:
    """The part of the plan not yet recorded, per mechanism."""
    out: list[Event] = []
    for planned in charge.planned:
        if isinstance(planned, PoissonGaussianEvent):
            used = sum(
                s.steps
                for s in charge.spent
                if isinstance(s, PoissonGaussianEvent) and s.stage == planned.stage
            )
            if planned.steps > used:
                out.append(
                    PoissonGaussianEvent(
                        planned.noise_multiplier,
                        planned.sampling_rate,
                        planned.steps - used,
                        planned.stage,
                    )
                )
        else:
            used = sum(
                s.count
                for s in charge.spent
                if isinstance(s, GaussianEvent) and s.stage == planned.stage
            )
            if planned.count > used:
                out.append(
                    GaussianEvent(planned.noise_multiplier, planned.count - used, planned.stage)
                )
    return out
