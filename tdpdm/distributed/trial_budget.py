"""How a stage-2 hyperparameter search spends one fixed budget (`private` mode).

Every trial is its own ledger charge: its plan is one DP-SGD segment plus the noisy selection
scores it may report. Trials all run the same mechanisms (the searched hyperparameters change
neither the sampling rate, the steps nor the noise), so the DP-SGD noise is calibrated once,
such that stage 1 composed with `budgeted_trials` full trial plans meets the run's epsilon.

Why admissions are capped and every admitted trial pays its full plan
----------------------------------------------------------------------
Letting a trial that ASHA stopped early pay only for what ran, and admitting extra trials in the
room that frees, makes admission an *adaptive privacy filter*: whether (and how many) further
mechanisms run depends on earlier outputs (the noisy scores drove the stops). A filter needs its
own theorem to stay within the target: such theorems exist for Renyi DP (Feldman & Zrnic 2021,
"Individual privacy accounting via a Renyi filter"), not for the PRV/PLD accounting used here,
whose composition bounds assume the number and kind of mechanisms are fixed in advance.

So a run admits at most `budgeted_trials` trials, counted over all of its trial charges whatever
their status (stopped, failed, completed), and refuses every later one for good before it reads
a record. Every admitted trial is charged its *full* plan when it closes, however it ended: a
trial stopped early is then post-processing of the full trial's transcript (one may imagine it
ran to the end and the rest was thrown away), and the run's composition is exactly stage 1
plus `budgeted_trials` full trial plans, fixed in advance: the composition that calibrated
the noise, composed with PRV/PLD without any filter argument. Nothing is freed, so a refusal is
final: there is nothing to wait for.

`TrialAdmission.reserve` also composes stage 1, the run's trial charges and the new plan and
refuses over the run's target (a guard: with the cap it never triggers), and the ledger refuses
when the data set's budget would be exceeded. Selection (ASHA and the final choice) reads only
the noisy scores, so it is post-processing. Nothing here imports Ray.

Sizes are expected, never realised: each record is held out by an independent secret draw
(`trial.holdout_roles`), so the held-out and training counts are random and private. Planning
(the DP-SGD sampling rate, the score's normalising count) uses the expected sizes, public
functions of the record count and `tune.holdout_fraction`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tdpdm.config import RunConfig
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.calibration import calibrate_noise
from tdpdm.privacy.events import Event, GaussianEvent
from tdpdm.privacy.ledger import OPEN, BudgetExceededError, Charge, Ledger, LedgerError
from tdpdm.stages.dpsgd_plan import DPSGDPlan

TRIAL_STAGE = "diffusion"
SCORE_STAGE = "tune_score"
CHARGING = (
    "every admitted trial is charged its full plan (all its DP-SGD steps and all its noisy "
    "scores), whether it completed, was stopped early by ASHA or failed; at most "
    "{budgeted} trial(s) are admitted per run, later ones are refused before they read data"
)


def trial_job_prefix(run_id: str) -> str:
    return f"{run_id}-trial-"


def split_sizes(n_records: int, holdout_fraction: float) -> tuple[int, int]:
    """EXPECTED (training records, held-out records), public functions of the record count and
    the fraction, used for planning only (the realised counts are random and private); both
    are at least 1 record."""
    held = min(max(1, round(holdout_fraction * n_records)), n_records - 1)
    return n_records - held, held


@dataclass(frozen=True)
class TrialPlan:
    """What one trial may run: a DP-SGD segment (None on a DP release) and `reports` scores.

    `n_train` and `n_holdout` are the EXPECTED sizes (`split_sizes`): the segment's sampling
    rate and the score's normalising count come from them, never from the realised split."""

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
        """The full plan: reserved on the ledger, and what an admitted trial is charged
        (empty on a DP release: trials are free)."""
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
            "expected_train_records": self.n_train,
            "expected_holdout_records": self.n_holdout,
            "noise_multiplier": self.segment.noise_multiplier if self.segment else None,
            "sampling_rate": self.segment.sampling_rate if self.segment else None,
            "score_noise_multiplier": self.score_noise,
        }


@dataclass(frozen=True)
class Refusal:
    """Why a trial may not start; final (admitted trials never free budget, see above)."""

    reason: str


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
        return DPSGDPlan.for_section(TRIAL_STAGE, n_train, s2, sigma)

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

    The cap (`budgeted_trials` admissions per run) and the run's own target are checked here,
    atomically across trials because calls are serialised; the data set's budget is checked by
    the ledger, atomically across jobs."""

    def __init__(
        self,
        ledger: str,
        dataset: str,
        run_id: str,
        target_epsilon: float,
        delta: float,
        adjacency: str,
        stage1_events: list[Event],
        budgeted_trials: int,
    ) -> None:
        self.ledger = Ledger(ledger)
        self.dataset, self.run_id = dataset, run_id
        self.target, self.delta = target_epsilon, delta
        self.adjacency = Adjacency.parse(adjacency)
        self.stage1_events = list(stage1_events)
        self.budgeted_trials = int(budgeted_trials)

    def run_events(self) -> list[Event]:
        """Stage 1 plus what every trial of the run holds (its full plan, open or closed)."""
        return [*self.stage1_events, *trial_events(self.ledger, self.dataset, self.run_id)]

    def reserve(self, job_id: str, planned: list[Event]) -> Charge | Refusal:
        """The trial's open charge, or why it is refused (it then must not read data)."""
        if not job_id.startswith(trial_job_prefix(self.run_id)):
            raise LedgerError(f"{job_id} is not a trial of run {self.run_id}")
        admitted = trial_charges(self.ledger, self.dataset, self.run_id)
        resumed = any(c.job_id == job_id and c.status == OPEN for c in admitted)
        if not resumed and len(admitted) >= self.budgeted_trials:
            return Refusal(
                f"refused: run {self.run_id} already admitted its {self.budgeted_trials} "
                "budgeted trial(s), each charged its full plan; no record was read"
            )
        events = self.run_events() if resumed else [*self.run_events(), *planned]
        total = compute_epsilon(events, self.delta, self.adjacency)
        if total.epsilon > self.target:
            return Refusal(
                f"refused: this trial would bring run {self.run_id} to epsilon "
                f"{total.epsilon:.3f}, over its target {self.target:g}; no record was read"
            )
        try:
            return self.ledger.reserve(self.dataset, job_id, planned)
        except BudgetExceededError as err:
            return Refusal(str(err))


def trial_charges(ledger: Ledger, dataset: str, run_id: str) -> list[Charge]:
    prefix = trial_job_prefix(run_id)
    return [c for c in ledger.charges(dataset) if c.job_id.startswith(prefix)]


def trial_events(ledger: Ledger, dataset: str, run_id: str) -> list[Event]:
    return [e for c in trial_charges(ledger, dataset, run_id) for e in c.counted_events()]


def close_trial_charge(ledger: Ledger, charge: Charge, note: str) -> Charge:
    """Settle an admitted trial's charge at its FULL plan, however the trial ended (completed,
    stopped early by ASHA, failed): see the module docstring. Idempotent: a charge already
    closed (by the trial itself or the tuner) is returned as it is."""
    charge = _current(ledger, charge)  # the caller's copy may predate recent records
    if charge.status != OPEN:
        return charge
    try:
        ledger.record_rest_of_plan(charge.charge_id)
        return ledger.settle(charge.charge_id, note)
    except LedgerError:  # closed meanwhile by another closer
        return _current(ledger, charge)


def _current(ledger: Ledger, charge: Charge) -> Charge:
    return next(c for c in ledger.charges(charge.dataset) if c.charge_id == charge.charge_id)
