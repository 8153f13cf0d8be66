"""Ray Tune over the stage-2 hyperparameters, inside the run's one fixed privacy budget.

Trials run `trial.run_trial` under an ASHA scheduler that sees only each trial's scores: noisy
(accounted) held-out losses in `private` mode, losses on held-out *released* latents in
`released` mode (post-processing, free). At most `tune.budgeted_trials` trials are admitted
per run and every admitted trial is charged its full plan, however it ended (completed,
stopped early by ASHA, failed): see `trial_budget` for why. After the search every trial charge
of the run is closed, the best completed trial is chosen by its last score, and every trial
goes into the report with its status and what it was charged.

The run's secret held-out key (`MechanismKey.fresh("tune-holdout")`) is drawn here once and
reaches trials inside `TrialSetup`, in memory; nothing Tune persists (its results directory,
`tuner.pkl`, callbacks) holds the setup. Trial checkpoints and Tune's results directory live
under the custodian-private `work_dir`, never under the release directory.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tdpdm.config import RunConfig
from tdpdm.data import storage
from tdpdm.distributed.ray_runtime import ray_session
from tdpdm.distributed.trial import (
    COMPLETED,
    HOLDOUT_PURPOSE,
    REFUSED,
    TUNABLE,
    TrialSetup,
    checkpoint_uri,
    run_trial,
)
from tdpdm.distributed.trial_budget import (
    CHARGING,
    TrialAdmission,
    close_trial_charge,
    plan_trials,
    trial_charges,
    trial_job_prefix,
)
from tdpdm.models.diffusion import LatentDenoiser
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import Event, event_to_dict
from tdpdm.privacy.ledger import Ledger
from tdpdm.privacy.randomness import MechanismKey

STOPPED, FAILED = "stopped_by_asha", "failed"
STRICT_METRICS = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
SCORE_WORDS = {
    "private": (
        "mean per-record denoising loss of the trial's EMA model on a held-out part of the "
        "private latents (each record held out by an independent secret draw, fixed secret "
        "noise levels per record), clipped to [0, {clip:g}], summed with Gaussian noise "
        "(multiplier {sigma:g}) and divided by the expected held-out count, at every report; "
        "each release is on the ledger"
    ),
    "released": (
        "mean per-record denoising loss of the trial's EMA model on a held-out part of the "
        "released latents (a DP release: scoring is post-processing)"
    ),
}


@dataclass
class TuneOutcome:
    denoiser: torch.nn.Module
    best: dict[str, Any]
    events: list[Event]
    section: dict[str, Any] = field(default_factory=dict)


def run_tune_search(
    cfg: RunConfig,
    *,
    run_id: str,
    n_records: int,
    num_classes: int,
    latent_dim: int,
    latents_uri: str,
    stage1_events: list[Event],
    adjacency: Adjacency,
    delta: float,
    work_dir: str,
    log: Callable[[str], None] = print,
) -> TuneOutcome:
    """Search, close every trial's charge, pick the best completed trial and load its model.

    `work_dir` (local path or URI) is custodian-private: trial checkpoints and, when local,
    Tune's own results directory go there."""
    t = cfg.tune
    plan = plan_trials(cfg, n_records, adjacency, delta, stage1_events)
    log(
        f"tune: {t.trials} trial(s) asked, {t.max_concurrent_trials} at a time, ASHA over "
        f"{len(plan.report_steps())} report(s) of {plan.steps} steps"
        + (
            f"; DP-SGD sigma {plan.segment.noise_multiplier:.3f} calibrated for stage 1 + "
            f"{t.budgeted_trials} trial(s) within epsilon {cfg.epsilon:g}"
            if plan.segment
            else " (on the DP release: trials are free)"
        )
    )
    setup = TrialSetup(
        run_id=run_id,
        dataset=cfg.dataset,
        mode=cfg.mode,
        ledger=_absolute(cfg.ledger),
        latents_uri=_absolute(latents_uri),
        n_records=n_records,
        num_classes=num_classes,
        stage2=cfg.stage2,
        tune=t,
        plan=plan,
        work_dir=_absolute(work_dir),
        holdout_key=MechanismKey.fresh(HOLDOUT_PURPOSE),
        seed=cfg.seed,
        device=cfg.device,
    )
    admission_args = (
        setup.ledger,
        cfg.dataset,
        run_id,
        cfg.epsilon,
        delta,
        adjacency.value,
        list(stage1_events),
        t.budgeted_trials,
    )
    results = _fit(cfg, setup, admission_args)
    trials = _close_and_describe(setup, results)
    best = select_trial(trials, run_id)
    best["selected"] = True
    hyper = best["hyperparameters"]
    model = LatentDenoiser(latent_dim, num_classes, int(hyper["hidden"]), int(hyper["depth"]))
    state = torch.load(
        io.BytesIO(storage.read_bytes(checkpoint_uri(setup.work_dir, best["trial_id"]))),
        weights_only=True,
    )
    model.load_state_dict(state)
    model.eval()
    events = [e for c in trial_charges(Ledger(setup.ledger), cfg.dataset, run_id) for e in c.spent]
    log(
        f"tune: chose {best['trial_id']} (score {best['score']:.4f}) of "
        + ", ".join(f"{x['trial_id']} {x['status']}" for x in trials)
    )
    section = {
        "trials_requested": t.trials,
        "budgeted_trials": t.budgeted_trials if plan.private else None,
        "max_concurrent_trials": t.max_concurrent_trials,
        "scheduler": {
            "name": "ASHA",
            "time_attr": "training_iteration",
            "max_t": len(plan.report_steps()),
            "grace_period": t.grace_period,
            "reduction_factor": t.reduction_factor,
        },
        "score": SCORE_WORDS[cfg.mode].format(clip=t.score_clip, sigma=t.score_noise_multiplier),
        "selection": SELECTION_WORDS,
        "charging": CHARGING.format(budgeted=t.budgeted_trials) if plan.private else None,
        "trial_plan": plan.as_dict(),
        "search_space": {k: list(getattr(t, k)) for k in TUNABLE},
        "selected_trial": best["trial_id"],
        "trials": trials,
    }
    return TuneOutcome(model, best, events, section)


SELECTION_WORDS = (
    "lowest last score among the trials that reached the most reports: the completed ones "
    "when any completed, else those ASHA stopped last (selection reads only scores)"
)


def select_trial(trials: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """The trial whose model is kept: deepest rung first, then lowest last score.

    Completed trials reached every report, so they win whenever one exists. ASHA can stop every
    trial of a search whose scores are noisy; each stopped trial left its model at its last
    report, so the best of the deepest rung is used rather than failing the whole run."""
    candidates = [x for x in trials if x["status"] in (COMPLETED, STOPPED) and x["reports"]]
    if not candidates:
        raise RuntimeError(
            f"tune: no trial of {run_id} reported a score ("
            + ", ".join(f"{x['trial_id']}: {x['status']}" for x in trials)
            + ")"
        )
    deepest = max(x["reports"] for x in candidates)
    return min((x for x in candidates if x["reports"] == deepest), key=lambda x: x["score"])


def _absolute(uri: str) -> str:
    """Trials run in other processes (other nodes): local paths must not depend on a cwd."""
    return os.path.abspath(uri) if storage.local_path(uri) is not None else uri


def _fit(cfg: RunConfig, setup: TrialSetup, admission_args: tuple) -> list[dict[str, Any]]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # One way to start or join Ray: reuse the job's, join distributed.address or RAY_ADDRESS,
    # else a private local one, stopped at the end (`ray_runtime.ray_session`).
    with ray_session(cfg.distributed.address, log_to_driver=False):
        admission = None
        if setup.plan.private:
            actor = ray.remote(num_cpus=0)(TrialAdmission)
            admission = actor.remote(*admission_args)

        def trainable(config: dict[str, Any]) -> None:
            torch.set_num_threads(max(1, int(setup.tune.cpus_per_trial)))

            def admit(job_id: str, planned: list[Event]):
                if admission is None:
                    raise RuntimeError("private trials need the admission actor")
                return ray.get(admission.reserve.remote(job_id, planned))

            trial_id = tune.get_context().get_trial_id()
            run_trial(config, setup, trial_id, admit, tune.report)

        t = setup.tune
        tracker = _trial_tracker(setup.ledger, setup.dataset, setup.run_id)
        space = {k: tune.choice(list(getattr(t, k))) for k in TUNABLE}
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric="score",
            mode="min",
            max_t=len(setup.plan.report_steps()),
            grace_period=min(t.grace_period, len(setup.plan.report_steps())),
            reduction_factor=t.reduction_factor,
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": t.cpus_per_trial}),
            param_space=space,
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                num_samples=t.trials,
                max_concurrent_trials=t.max_concurrent_trials,
                trial_name_creator=lambda trial: f"trial-{trial.trial_id}",
                trial_dirname_creator=lambda trial: f"trial-{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=setup.run_id,
                storage_path=_tune_storage(cfg, setup.work_dir),
                verbose=1 if cfg.progress else 0,
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[tracker],
            ),
        )
        # A refused trial reports its refusal without a score; ASHA skips such results.
        strict = os.environ.get(STRICT_METRICS)
        os.environ[STRICT_METRICS] = "1"
        try:
            tuner.fit()
        finally:
            if strict is None:
                os.environ.pop(STRICT_METRICS, None)
            else:
                os.environ[STRICT_METRICS] = strict
        return list(tracker.trials.values())


def _tune_storage(cfg: RunConfig, work_dir: str) -> str:
    """Tune's results directory (trial results, errors, experiment state): custodian-private,
    under `work_dir` when it is local; on an object store it stays in the local cache as
    before (Tune's own filesystem layer does not share tdpdm's storage settings)."""
    if storage.local_path(work_dir) is not None:
        return _absolute(storage.join(work_dir, "ray_results"))
    return _absolute(storage.join(cfg.cache_dir, "ray_results"))


def _trial_tracker(ledger_uri: str, dataset: str, run_id: str):
    """A Tune callback (it runs in the driver) that follows every trial: its hyperparameters,
    the scores it reported, how it ended; and that closes its charge (at its full plan) as soon
    as Tune ends it. It holds only public names, never the trial setup: Tune pickles callbacks
    into its results directory."""
    from ray import tune

    class TrialTracker(tune.Callback):
        def __init__(self) -> None:
            self.trials: dict[str, dict[str, Any]] = {}

        def _entry(self, trial) -> dict[str, Any]:
            return self.trials.setdefault(
                trial.trial_id,
                {
                    "trial_id": trial.trial_id,
                    "config": {k: trial.config[k] for k in TUNABLE if k in trial.config},
                    "metrics": {},
                    "scores": [],
                    "error": None,
                },
            )

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self._entry(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            entry = self._entry(trial)
            entry["metrics"] = {k: v for k, v in result.items() if not k.startswith("config")}
            if "score" in result:
                entry["scores"].append(float(result["score"]))

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._close(trial, failed="score" not in (trial.last_result or {}))

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._entry(trial)["error"] = _error_kind(trial.get_error())
            self._close(trial, failed=True)

        def _close(self, trial, failed: bool) -> None:
            self._entry(trial)
            ledger = Ledger(ledger_uri)
            job_id = trial_job_prefix(run_id) + trial.trial_id
            for charge in trial_charges(ledger, dataset, run_id):
                if charge.job_id == job_id:
                    ended = "failed" if failed else "ended by Tune"
                    close_trial_charge(ledger, charge, f"{ended}; charged its full plan")

    return TrialTracker()


def _error_kind(error: BaseException | None) -> str:
    """What the report says of a failed trial: the exception's type only. Its message may
    carry private values (DESIGN.md 3.8); the full traceback stays in Tune's results directory,
    under the custodian-private work_dir."""
    if error is None:
        return "failed"
    cause = getattr(error, "cause", None)  # RayTaskError wraps the trial's own exception
    name = type(cause if isinstance(cause, BaseException) else error).__name__
    return f"failed: {name} (message withheld: see the custodian's Tune logs)"


def _close_and_describe(setup: TrialSetup, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Close every trial charge left open (at its full plan), then describe each trial from
    results and ledger: `steps`/`reports` are what it ran, `events` what it was charged."""
    ledger = Ledger(setup.ledger)
    by_trial = {r["trial_id"]: r for r in results}
    prefix = trial_job_prefix(setup.run_id)
    charges = {
        c.job_id.removeprefix(prefix): c for c in trial_charges(ledger, setup.dataset, setup.run_id)
    }
    for trial_id, charge in charges.items():
        note = "closed after the search; charged its full plan"
        charges[trial_id] = close_trial_charge(ledger, charge, note)
    trials = []
    for trial_id, r in sorted(by_trial.items()):
        m = r["metrics"]
        charge = charges.get(trial_id)
        if m.get("status") == REFUSED:
            status = REFUSED
        elif r["error"] is not None:
            status = FAILED
        elif m.get("status") == COMPLETED:
            status = COMPLETED
        elif r["scores"]:
            status = STOPPED
        else:
            status = FAILED
        trials.append(
            {
                "trial_id": trial_id,
                "job_id": prefix + trial_id,
                "status": status,
                "hyperparameters": r["config"],
                "steps": int(m.get("step", 0)),
                "reports": len(r["scores"]),
                "score": r["scores"][-1] if r["scores"] else None,
                "scores": r["scores"],
                "reason": m.get("reason") or r["error"],
                "charge_id": charge.charge_id if charge else None,
                "events": [event_to_dict(e) for e in charge.spent] if charge else [],
                "charged": "full plan" if charge else "nothing",
                "selected": False,
            }
        )
    return trials
