"""The whole run, orchestrated: plan -> charge -> stage 1 -> stage 2 -> sample -> report.

Order matters for privacy: the plan is calibrated and reserved on the ledger from the record
*count* alone, and only then is the private training split unsealed with the charge's grant.
Everything after the mechanisms (sampling, decoding, grids) is post-processing. Every mechanism
draws its randomness from its own fresh secret key (`tdpdm.privacy.randomness`); `cfg.seed`
only sets public things (initial weights, the synthetic sampler).

The stages are seams (`stages/stage1_mechanisms.py`, `stages/stage2_models.py`); this module
only wires them, picks where DP-SGD runs (in-process or on Ray Train) and whether stage 2 is a
Tune search; what follows the mechanisms (sampling, the release, the reports, the custodian's
evaluation) is `stages/publish.py`. Outputs are split (`stages/artifacts.py`): `release/` holds
exactly what the guarantee covers, `custodian/` everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tdpdm.config import RunConfig
from tdpdm.data.private import PrivateTrainingSet
from tdpdm.distributed.backend import ray_for as _ray_for
from tdpdm.distributed.backend import require_backend as _require_backend
from tdpdm.distributed.backend import stage2_sums as _stage2_sums
from tdpdm.distributed.backend import trainer as _trainer
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.events import Event, event_from_dict, event_to_dict
from tdpdm.privacy.session import PrivacySession
from tdpdm.privacy.units import record_target
from tdpdm.report.summary import describe
from tdpdm.report.text import epsilon_text
from tdpdm.stages.artifacts import (
    RunLayout,
    load_model_state,
    read_manifest,
    save_model,
    write_manifest,
)
from tdpdm.stages.context import Log, RunContext, charged, handed_in, training_set
from tdpdm.stages.encode import latent_size
from tdpdm.stages.latents_io import read_latents
from tdpdm.stages.plan import plan_run
from tdpdm.stages.publish import publish
from tdpdm.stages.stage1_mechanisms import STAGE1_MECHANISMS, run_stage1
from tdpdm.stages.stage2_models import Stage2Input, stage2_model
from tdpdm.telemetry import Telemetry

__all__ = [
    "RunResult",
    "describe",
    "epsilon_text",
    "run_diffuse_stage",
    "run_encode_stage",
    "run_pipeline",
    "training_set",
]


@dataclass
class RunResult:
    out: str
    report: dict[str, Any]
    """The custodian report (the release report plus custodian-only values)."""

    @property
    def epsilon(self) -> float:
        return float(self.report["privacy"]["epsilon"])

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.out)


def run_pipeline(
    cfg: RunConfig,
    log: Log = print,
    telemetry: Telemetry | None = None,
    records: PrivateTrainingSet | None = None,
) -> RunResult:
    """Both stages in one job, planned and charged together up front.

    `records` replaces the configured training set (the privacy audit passes one with its
    canaries appended); it is read under this run's charge like any other."""
    ctx = RunContext.start(cfg, log, telemetry, handed_in(records))
    _require_backend(cfg)
    records = records or training_set(cfg, ctx.data_dir, ctx.source)
    n = records.n_records()
    log(
        f"planning {cfg.mode} run on {n} {cfg.dataset} records: target epsilon {cfg.epsilon:g} "
        f"at delta {ctx.budget.delta:g} ({ctx.budget.adjacency.value}); calibrating noise ..."
    )
    model2 = stage2_model(cfg)
    # Per privacy unit: the mechanisms are calibrated per record to epsilon/k at the record
    # delta whose group conversion meets (epsilon, delta) per unit (tdpdm.privacy.units).
    unit = ctx.budget.unit
    epsilon_r, delta_r = record_target(unit, cfg.epsilon, ctx.budget.delta)
    rcfg = cfg if unit is None else cfg.replace(epsilon=epsilon_r)
    if unit is not None:
        log(f"guarantee per unit ({unit.describe()}): mechanisms calibrated by group privacy")
    plan = plan_run(
        rcfg,
        n,
        ctx.budget.adjacency,
        delta_r,
        stage2=lambda spent: model2.plan(rcfg, n, ctx.budget.adjacency, delta_r, spent),
    )
    session = ctx.begin(plan.events())
    with charged(ctx, session, lambda: records.reads > 0), _ray_for(cfg):
        out = run_stage1(ctx, plan, session, records, _trainer(cfg))
        latents_uri = ctx.layout.latents(cfg.mode)
        if cfg.tune.trials:
            denoiser = _tuned_stage2(ctx, latents_uri, list(session.recorded), n)
        else:
            data = Stage2Input(out.latents, out.labels, latents_uri if out.released else None)
            with _stage2_sums(cfg):
                denoiser = model2.fit(ctx, data, plan.stage2, session if plan.stage2 else None)
            save_model(denoiser, ctx.layout.diffusion)
    custodian = publish(ctx, out.model, denoiser, session.recorded, session, n, out.info)
    return RunResult(ctx.cfg.out, custodian)


def run_encode_stage(
    cfg: RunConfig, log: Log = print, telemetry: Telemetry | None = None
) -> dict[str, Any]:
    """Stage 1 alone; writes the autoencoder, the latents and the custodian's `stage1.json`.

    In `private` mode stage 1 is calibrated to the whole `cfg.epsilon`; `tdpdm diffuse` then
    needs a larger target for the two stages together."""
    _whole_runs_only(cfg)
    ctx = RunContext.start(cfg, log, telemetry)
    _require_backend(cfg)
    records = training_set(cfg, ctx.data_dir, ctx.source)
    n = records.n_records()
    plan = plan_run(cfg, n, ctx.budget.adjacency, ctx.budget.delta, encoder_only=True)
    session = ctx.begin(plan.events())
    with charged(ctx, session, lambda: records.reads > 0), _ray_for(cfg):
        run_stage1(ctx, plan, session, records, _trainer(cfg))
    bound = compute_epsilon(session.recorded, ctx.budget.delta, ctx.budget.adjacency)
    s1 = cfg.stage1
    manifest = {
        "dataset": cfg.dataset,
        "mode": cfg.mode,
        "job_id": ctx.job_id,
        "n_records": n,
        "seed": cfg.seed,
        "latent_dim": s1.latent_dim,
        "latent": s1.latent,
        "latent_channels": s1.latent_channels,
        "mechanism": s1.mechanism,
        "vae_hidden": s1.vae_hidden,
        "conditional_decoder": s1.conditional_decoder,
        "width": s1.width,
        "channels": ctx.cfg.channels,
        "image_size": ctx.cfg.image_size,
        "events": [event_to_dict(e) for e in session.recorded],
        "guarantee": bound.as_dict(),
        "stages": ctx.stages,
    }
    write_manifest(ctx.layout.manifest, manifest)
    ctx.remove_work()
    return manifest


def run_diffuse_stage(
    cfg: RunConfig, from_dir: str, log: Log = print, telemetry: Telemetry | None = None
) -> RunResult:
    """Stage 2 on the output of `run_encode_stage`, then sampling and the report.

    Private latents are sensitive: in `private` mode reading them is charged (the stage-2 model
    calibrated so that stage 1 and stage 2 together meet `cfg.epsilon`)."""
    _whole_runs_only(cfg)
    source = RunLayout(from_dir)
    manifest = read_manifest(source.manifest)
    for key in ("dataset", "mode"):
        if manifest[key] != getattr(cfg, key):
            raise ValueError(
                f"{from_dir} was encoded for {key} {manifest[key]!r}, not {getattr(cfg, key)!r}"
            )
    stage1 = cfg.stage1.replace(
        latent_dim=manifest["latent_dim"],
        latent=manifest.get("latent", "vector"),
        latent_channels=manifest.get("latent_channels", cfg.stage1.latent_channels),
        width=manifest["width"],
        mechanism=manifest.get("mechanism", "dpsgd-autoencoder"),
        vae_hidden=manifest.get("vae_hidden", cfg.stage1.vae_hidden),
        conditional_decoder=manifest.get("conditional_decoder", False),
    )
    cfg = cfg.replace(stage1=stage1)  # a checked copy: the caller's config is untouched
    ctx = RunContext.start(cfg, log, telemetry)
    stage1_events = [event_from_dict(e) for e in manifest["events"]]
    n = int(manifest["n_records"])
    shape = (ctx.cfg.channels, ctx.cfg.image_size)
    if shape != (manifest.get("channels", 1), manifest.get("image_size", 28)):
        raise ValueError(f"{from_dir} was encoded for another image shape than {shape}")
    autoencoder = STAGE1_MECHANISMS[stage1.mechanism].blank(ctx.cfg, ctx.spec.num_classes)
    load_model_state(source.autoencoder, autoencoder)
    latents_uri = source.latents(cfg.mode)
    model2 = stage2_model(cfg)
    session: PrivacySession | None = None
    events: list[Event] = list(stage1_events)
    if cfg.mode == "private" and cfg.tune.trials:
        # Each trial reserves its own charge and reads the private latents under it.
        with _ray_for(cfg):
            denoiser = _tuned_stage2(ctx, latents_uri, stage1_events, n)
    elif cfg.mode == "private":
        adjacency, delta = ctx.budget.adjacency, ctx.budget.delta
        plan2 = model2.plan(cfg, n, adjacency, delta, stage1_events)
        session = ctx.begin(plan2.events())
        read = [False]
        with charged(ctx, session, lambda: read[0]):
            if not session.grant.is_active():
                raise PermissionError("private latents need an open ledger charge")
            read[0] = True  # before the first byte: a failure from here on is charged
            latents, labels, _ = read_latents(latents_uri, ctx.spec.num_classes)
            denoiser = model2.fit(ctx, Stage2Input(latents, labels), plan2, session)
        events += session.recorded
        save_model(denoiser, ctx.layout.diffusion)
    else:  # a DP release: post-processing
        latents, labels, _ = read_latents(latents_uri, ctx.spec.num_classes)
        if cfg.tune.trials:
            with _ray_for(cfg):
                denoiser = _tuned_stage2(ctx, latents_uri, stage1_events, n)
        else:
            denoiser = model2.fit(ctx, Stage2Input(latents, labels, latents_uri), None, None)
            save_model(denoiser, ctx.layout.diffusion)
    # The decoder the synthetic images are made with is part of the release.
    save_model(autoencoder, ctx.layout.autoencoder)
    custodian = publish(ctx, autoencoder, denoiser, events, session, n, {"from": from_dir})
    return RunResult(ctx.cfg.out, custodian)


def _whole_runs_only(cfg: RunConfig) -> None:
    if cfg.privacy_unit:
        raise ValueError(
            "privacy_unit: a guarantee per unit is planned for both stages together; run the "
            "whole pipeline (tdpdm run), not encode and diffuse as separate jobs"
        )


def _tuned_stage2(
    ctx: RunContext, latents_uri: str, stage1_events: list, n: int
) -> torch.nn.Module:
    """Stage 2 as a Ray Tune search; the best completed trial's EMA model feeds sampling."""
    from tdpdm.distributed.tune_stage2 import run_tune_search

    cfg = ctx.cfg
    with ctx.timed("tune", dp_sgd=cfg.mode == "private") as details:
        outcome = run_tune_search(
            cfg,
            run_id=ctx.job_id,
            n_records=n,
            num_classes=ctx.spec.num_classes,
            latent_dim=latent_size(cfg.stage1, cfg.image_size),
            latents_uri=latents_uri,
            stage1_events=stage1_events,
            adjacency=ctx.budget.adjacency,
            delta=ctx.budget.delta,
            log=ctx.log,
            work_dir=ctx.layout.work,
        )
        details |= {"trials": len(outcome.section["trials"]), "selected": outcome.best["trial_id"]}
    ctx.tuning, ctx.tuning_events = outcome.section, outcome.events
    ctx.report_budget()
    save_model(outcome.denoiser, ctx.layout.diffusion)
    return outcome.denoiser
