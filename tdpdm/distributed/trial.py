"""One stage-2 tuning trial: admit, read, train, score, report. Ray-free (the tuner injects
`admit` and `report`), so the privacy logic is the same wherever trials run.

Randomness (DESIGN.md 3.7, 3.9): the held-out split and the score's fixed noise levels and draws
come from the run's secret `holdout_key` (one per run, drawn by the tuner), per record: a
record's role and draws depend only on its own position's draw, so adding a record changes no
other record's. Each trial draws its own fresh key (`MechanismKey.fresh("tune-trial")`) inside
the trial, with independent children for its DP-SGD segment ("dpsgd") and its score noise
("score-noise"). `setup.seed` (the published `--seed`) only seeds initial weights.

Exactness at a stop: Tune stops a trial only while it is blocked in `report`, so every DP-SGD
step and every noisy score is recorded on the ledger *before* each report leaves the trial; the
charge is then closed at the trial's full plan anyway (see `trial_budget`).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tdpdm.config import Stage2Config, TuneConfig
from tdpdm.data import storage
from tdpdm.data.private import PrivateAccessError
from tdpdm.distributed.trial_budget import (
    Refusal,
    TrialPlan,
    close_trial_charge,
    trial_job_prefix,
)
from tdpdm.models.diffusion import alpha_bar
from tdpdm.privacy.events import Event, PoissonGaussianEvent
from tdpdm.privacy.ledger import Charge, Ledger
from tdpdm.privacy.randomness import MechanismKey, bernoulli_roles
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages.diffuse import train_diffusion
from tdpdm.stages.dpsgd_plan import DPSGDPlan
from tdpdm.stages.latents_io import read_latents

TUNABLE = ("lr", "hidden", "depth", "ema_decay", "label_dropout", "noise_draws")
"""Stage-2 knobs the search may change: none changes the privacy cost of a trial. Sampler steps
and guidance are not searched: the held-out denoising loss does not depend on them."""

REFUSED, RUNNING, COMPLETED = "refused", "running", "completed"
HOLDOUT_PURPOSE, TRIAL_PURPOSE = "tune-holdout", "tune-trial"
SCORE_DRAWS = 4
"""Fixed (noise level, noise) draws per held-out record in the score."""

Admit = Callable[[str, list[Event]], "Charge | Refusal"]
Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs; plain data so it pickles to any Ray worker.

    `n_records` is the planned (public) record count the plan was made from; the latents file
    may hold a different, private number of rows (a Poisson subset), each drawing its own role.
    `holdout_key` is the run's secret key for the held-out roles and the score's fixed draws:
    it travels to workers in memory and is never printed (its repr hides it) nor written into a
    report. `work_dir` is custodian-private (trial checkpoints); `seed` is the public `--seed`,
    for initial weights only."""

    run_id: str
    dataset: str
    mode: str
    ledger: str
    latents_uri: str
    n_records: int
    num_classes: int
    stage2: Stage2Config
    tune: TuneConfig
    plan: TrialPlan
    work_dir: str
    holdout_key: MechanismKey
    seed: int
    device: str = "cpu"


def checkpoint_uri(work_dir: str, trial_id: str) -> str:
    """A trial's EMA model: custodian-private (the chosen one is released by the pipeline)."""
    return storage.join(work_dir, "tune", trial_id, "diffusion.pt")


def holdout_roles(holdout_key: MechanismKey, n: int, fraction: float) -> np.ndarray:
    """(n,) bool, True = held out for scoring: one independent secret Bernoulli(`fraction`)
    draw per record, so adding a record moves no other record between the two parts."""
    return bernoulli_roles(holdout_key.child("roles"), n, fraction)


def score_draws(
    holdout_key: MechanismKey, records: np.ndarray, dim: int, draws: int = SCORE_DRAWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The score's fixed noise levels t (m, draws) and noises eps (m, draws, dim) of the held
    out `records` (their positions): each record's from its own child key, so they never
    depend on which other records are held out."""
    base = holdout_key.child("score-draws")
    t = np.empty((len(records), draws))
    eps = np.empty((len(records), draws, dim))
    for row, record in enumerate(np.asarray(records, dtype=np.int64)):
        gen = base.child(int(record)).numpy()
        t[row] = gen.random(draws)
        eps[row] = gen.standard_normal((draws, dim))
    return torch.from_numpy(t).float(), torch.from_numpy(eps).float()


class IncrementalRecorder:
    """Stands in for the trial's session inside `train_dpsgd`: steps are recorded in increments
    (`flush` before each report) and `train_dpsgd`'s final record adds only the remainder."""

    def __init__(self, session: PrivacySession, segment: DPSGDPlan) -> None:
        self.session, self.segment, self.flushed = session, segment, 0

    @property
    def grant(self):
        return self.session.grant

    def flush(self, done: int) -> None:
        if done > self.flushed:
            self.session.record(self.segment.event(steps=done - self.flushed))
            self.flushed = done

    def record(self, event: Event) -> None:
        if not isinstance(event, PoissonGaussianEvent):
            raise TypeError("a trial's DP-SGD loop records only its own segment")
        self.flush(event.steps)


class HeldOutScore:
    """Mean per-record denoising loss on held-out records, at fixed noise levels and draws
    (`t`, `eps`: one row per held-out record, see `score_draws`).

    Private mode releases it with the Gaussian mechanism: each record's loss is clipped to
    [0, B] and centred, so adding or removing one record moves the sum by at most B/2 (the
    clipping norm C of the noise multiplier convention); noise std = multiplier * B/2 on the
    sum (from `noise_key`), then divided by `normaliser`, the EXPECTED held-out count (public),
    never by the realised one (private). On a DP release (`noise_multiplier` None) the mean over
    the realised held-out records is post-processing."""

    def __init__(
        self,
        latents: np.ndarray,
        labels: np.ndarray,
        t: torch.Tensor,
        eps: torch.Tensor,
        *,
        clip: float,
        noise_multiplier: float | None,
        normaliser: float,
        noise_key: MechanismKey | None,
    ) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(latents)).float()
        self.y = torch.from_numpy(np.ascontiguousarray(labels)).long()
        if t.shape[0] != len(self.x) or eps.shape[:2] != t.shape:
            raise ValueError("one row of fixed draws per held-out record is needed")
        if noise_multiplier is not None and (noise_key is None or not normaliser > 0):
            raise ValueError("a noisy score needs its mechanism key and a positive normaliser")
        self.t, self.eps = t, eps
        self.clip, self.noise_multiplier, self.normaliser = clip, noise_multiplier, normaliser
        self.noise = noise_key.torch() if noise_key is not None else None

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        losses = [torch.zeros(0)]
        for idx in torch.arange(len(self.x)).split(1024):
            t, eps = self.t[idx], self.eps[idx]
            a = alpha_bar(t).unsqueeze(-1)
            xt = a.sqrt() * self.x[idx].unsqueeze(1) + (1 - a).sqrt() * eps
            pred = model(xt, t, self.y[idx])
            losses.append(((pred - eps) ** 2).mean(dim=(1, 2)))
        clipped = torch.cat(losses).clamp(0.0, self.clip)
        half = self.clip / 2
        if self.noise_multiplier is None:  # scored on a DP release: post-processing
            return float(clipped.mean()) if len(clipped) else half
        noisy = (clipped - half).sum() + self.noise_multiplier * half * torch.randn(
            (), generator=self.noise
        )
        return float(noisy / self.normaliser + half)


def open_latents(uri: str, session: PrivacySession | None):
    """Private latents only under an open charge; a DP release needs none. Their number of
    rows is private (a Poisson subset has a random size): it is neither checked against the
    planned count nor put in a message."""
    if session is not None and not session.grant.is_active():
        raise PrivateAccessError("private latents need an open ledger charge for this trial")
    latents, labels, _ = read_latents(uri)
    return latents, labels


def run_trial(
    hyper: dict[str, Any], setup: TrialSetup, trial_id: str, admit: Admit, report: Report
) -> None:
    """Run one trial to its last report (or until Tune stops it at a report). An admitted
    trial's charge is closed at its full plan however it ends."""
    plan = setup.plan
    job_id = trial_job_prefix(setup.run_id) + trial_id
    stage2 = setup.stage2.replace(**{k: hyper[k] for k in TUNABLE if k in hyper})
    base = {"job_id": job_id, "trial_id": trial_id}
    session: PrivacySession | None = None
    if plan.private:
        outcome = admit(job_id, plan.events())
        if isinstance(outcome, Refusal):  # final: nothing is ever freed (see trial_budget)
            report(base | {"status": REFUSED, "reason": outcome.reason})
            return
        session = PrivacySession(Ledger(setup.ledger), outcome)
    key = MechanismKey.fresh(TRIAL_PURPOSE)  # this trial's own secret randomness
    try:
        _train_and_report(setup, trial_id, stage2, session, key, base, report)
    except SystemExit:  # Tune stopped us inside `report`
        if session is not None:
            note = "stopped by the scheduler; charged its full plan"
            close_trial_charge(session.ledger, session.charge, note)
        raise
    except BaseException as err:
        if session is not None:
            note = f"failed: {type(err).__name__}; charged its full plan"
            close_trial_charge(session.ledger, session.charge, note)
        raise
    if session is not None:
        close_trial_charge(session.ledger, session.charge, "completed; charged its full plan")


def _train_and_report(
    setup: TrialSetup,
    trial_id: str,
    stage2: Stage2Config,
    session: PrivacySession | None,
    key: MechanismKey,
    base: dict[str, Any],
    report: Report,
) -> None:
    plan = setup.plan
    latents, labels = open_latents(setup.latents_uri, session)
    held_out = holdout_roles(setup.holdout_key, len(latents), setup.tune.holdout_fraction)
    train, held = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    t, eps = score_draws(setup.holdout_key, held, latents.shape[1])
    score = HeldOutScore(
        latents[held],
        labels[held],
        t,
        eps,
        clip=setup.tune.score_clip,
        noise_multiplier=plan.score_noise,
        normaliser=float(plan.n_holdout),
        noise_key=key.child("score-noise") if plan.private else None,
    )
    recorder = IncrementalRecorder(session, plan.segment) if session and plan.segment else None
    report_at = plan.report_steps()

    def on_ema(step: int, ema: nn.Module) -> None:
        if step not in report_at:
            return
        if recorder is not None:
            recorder.flush(step)
        value = score(ema)
        if session is not None:
            session.record(plan.score_event())
        last = step == report_at[-1]
        # At every report, before Tune may stop the trial there: a search in which ASHA stops
        # every trial still keeps the best model of its deepest rung (`select_trial`).
        buf = io.BytesIO()
        torch.save(ema.state_dict(), buf)
        storage.write_bytes_atomic(checkpoint_uri(setup.work_dir, trial_id), buf.getvalue())
        report(
            base
            | {
                "status": COMPLETED if last else RUNNING,
                "score": value,
                "step": step,
                "rung": report_at.index(step) + 1,
            }
        )

    train_diffusion(
        latents[train],
        labels[train],
        stage2,
        num_classes=setup.num_classes,
        plan=plan.segment,
        session=recorder,  # type: ignore[arg-type]  # records like a session, in increments
        device=setup.device,
        seed=setup.seed + zlib.crc32(trial_id.encode()) % 100_000,  # public: initial weights
        key=key.child("dpsgd") if plan.private else None,
        progress=False,
        on_ema=on_ema,
    )
