"""One stage-2 tuning trial: admit, read, train, score, report. Ray-free (the tuner injects
`admit` and `report`), so the privacy logic is the same wherever trials run.

Exactness at a stop: Tune stops a trial only while it is blocked in `report`, so every DP-SGD
step and every noisy score is recorded on the ledger *before* each report leaves the trial.
"""

from __future__ import annotations

import dataclasses
import io
import time
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
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages.diffuse import train_diffusion
from tdpdm.stages.dpsgd import DPSGDPlan
from tdpdm.stages.latents_io import read_latents

TUNABLE = ("lr", "hidden", "depth", "ema_decay", "label_dropout", "noise_draws")
"""Stage-2 knobs the search may change: none changes the privacy cost of a trial. Sampler steps
and guidance are not searched: the held-out denoising loss does not depend on them."""

REFUSED, RUNNING, COMPLETED = "refused", "running", "completed"

ADMISSION_POLL_S = 1.0
Admit = Callable[[str, list[Event]], "Charge | Refusal"]
Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs; plain data so it pickles to any Ray worker."""

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
    out: str
    seed: int
    device: str = "cpu"


def checkpoint_uri(out: str, trial_id: str) -> str:
    return storage.join(out, "tune", trial_id, "diffusion.pt")


def split_indices(n: int, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of record *positions* (never of content): (train, held out)."""
    order = np.random.default_rng(seed + 7919).permutation(n)
    return order[n_holdout:], order[:n_holdout]


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
    """Mean per-record denoising loss on held-out records, at fixed noise levels and draws.

    Private mode releases it with the Gaussian mechanism: each record's loss is clipped to
    [0, B] and centred, so one record moves the sum by at most B/2 (the clipping norm C of the
    noise multiplier convention); noise std = multiplier * B/2 on the sum, divided by the public
    held-out count."""

    def __init__(
        self,
        latents: np.ndarray,
        labels: np.ndarray,
        *,
        clip: float,
        noise_multiplier: float | None,
        seed: int,
        draws: int = 4,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.from_numpy(np.ascontiguousarray(latents)).float()
        self.y = torch.from_numpy(np.ascontiguousarray(labels)).long()
        m, d = self.x.shape
        self.t = torch.rand(m, draws, generator=gen)
        self.eps = torch.randn(m, draws, d, generator=gen)
        self.clip, self.noise_multiplier = clip, noise_multiplier
        self.noise = torch.Generator().manual_seed(seed + 1)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        losses = []
        for idx in torch.arange(len(self.x)).split(1024):
            t, eps = self.t[idx], self.eps[idx]
            a = alpha_bar(t).unsqueeze(-1)
            xt = a.sqrt() * self.x[idx].unsqueeze(1) + (1 - a).sqrt() * eps
            pred = model(xt, t, self.y[idx])
            losses.append(((pred - eps) ** 2).mean(dim=(1, 2)))
        clipped = torch.cat(losses).clamp(0.0, self.clip)
        if self.noise_multiplier is None:  # scored on a DP release: post-processing
            return float(clipped.mean())
        half = self.clip / 2
        noisy = (clipped - half).sum() + self.noise_multiplier * half * torch.randn(
            (), generator=self.noise
        )
        return float(noisy / len(self.x) + half)


def open_latents(uri: str, n: int, session: PrivacySession | None):
    """Private latents only under an open charge; a DP release needs none."""
    if session is not None and not session.grant.is_active():
        raise PrivateAccessError("private latents need an open ledger charge for this trial")
    latents, labels, _ = read_latents(uri)
    if len(latents) != n:
        raise ValueError(f"{storage.redact(uri)}: {len(latents)} rows, expected {n}")
    return latents, labels


def run_trial(
    hyper: dict[str, Any], setup: TrialSetup, trial_id: str, admit: Admit, report: Report
) -> None:
    """Run one trial to its last report (or until Tune stops it at a report)."""
    plan = setup.plan
    job_id = trial_job_prefix(setup.run_id) + trial_id
    stage2 = dataclasses.replace(setup.stage2, **{k: hyper[k] for k in TUNABLE if k in hyper})
    base = {"job_id": job_id, "trial_id": trial_id}
    session: PrivacySession | None = None
    if plan.private:
        outcome = admit(job_id, plan.events())
        while isinstance(outcome, Refusal) and outcome.retry:
            time.sleep(ADMISSION_POLL_S)  # wait for running trials to settle, then ask again
            outcome = admit(job_id, plan.events())
        if isinstance(outcome, Refusal):
            report(base | {"status": REFUSED, "reason": outcome.reason})
            return
        session = PrivacySession(Ledger(setup.ledger), outcome)
    try:
        _train_and_report(setup, trial_id, stage2, session, base, report)
    except SystemExit:  # Tune stopped us inside `report`: everything that ran is recorded
        if session is not None:
            close_trial_charge(session.ledger, session.charge, False, "stopped by the scheduler")
        raise
    except BaseException as err:
        if session is not None:
            note = f"failed: {type(err).__name__}; charged at its full plan"
            close_trial_charge(session.ledger, session.charge, True, note)
        raise
    if session is not None:
        close_trial_charge(session.ledger, session.charge, False, "completed")


def _train_and_report(
    setup: TrialSetup,
    trial_id: str,
    stage2: Stage2Config,
    session: PrivacySession | None,
    base: dict[str, Any],
    report: Report,
) -> None:
    plan = setup.plan
    latents, labels = open_latents(setup.latents_uri, setup.n_records, session)
    train, held = split_indices(setup.n_records, plan.n_holdout, setup.seed)
    trial_seed = setup.seed + zlib.crc32(trial_id.encode()) % 100_000
    score = HeldOutScore(
        latents[held],
        labels[held],
        clip=setup.tune.score_clip,
        noise_multiplier=plan.score_noise,
        seed=trial_seed,
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
        if last:
            buf = io.BytesIO()
            torch.save(ema.state_dict(), buf)
            storage.write_bytes_atomic(checkpoint_uri(setup.out, trial_id), buf.getvalue())
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
        seed=trial_seed,
        progress=False,
        on_ema=on_ema,
    )
