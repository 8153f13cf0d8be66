"""The whole run, orchestrated: plan -> charge -> stage 1 -> stage 2 -> sample -> report.

Order matters for privacy: the plan is calibrated and reserved on the ledger from the record
*count* alone, and only then is the private training split unsealed with the charge's grant.
Everything after the mechanisms (sampling, decoding, grids) is post-processing. Every mechanism
draws its randomness from its own fresh secret key (`tdpdm.privacy.randomness`); `cfg.seed`
only sets public things (initial weights, the synthetic sampler).

The stages are seams (`stages/stage1_mechanisms.py`, `stages/stage2_models.py`); this module
only wires them, picks where DP-SGD runs (in-process or on Ray Train) and whether stage 2 is a
Tune search. Outputs are split (`stages/artifacts.py`): `release/` holds exactly what the
guarantee covers, `custodian/` everything else.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tdpdm import __version__
from tdpdm.config import RunConfig
from tdpdm.data import storage
from tdpdm.data.loader import load_split
from tdpdm.data.private import PrivateTrainingSet
from tdpdm.distributed.backend import ray_for as _ray_for
from tdpdm.distributed.backend import require_backend as _require_backend
from tdpdm.distributed.backend import trainer as _trainer
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.events import Event, event_from_dict, event_to_dict
from tdpdm.privacy.session import PrivacySession
from tdpdm.privacy.statement import parquet_guarantee, privacy_section
from tdpdm.privacy.units import record_target
from tdpdm.report import run_report
from tdpdm.report.grid import grid_png_bytes
from tdpdm.report.summary import describe, hardware
from tdpdm.report.text import epsilon_text
from tdpdm.stages import artifacts
from tdpdm.stages.artifacts import (
    RunLayout,
    load_model_state,
    read_manifest,
    save_model,
    write_manifest,
)
from tdpdm.stages.context import Log, RunContext, charged, handed_in, test_split, training_set
from tdpdm.stages.encode import latent_size
from tdpdm.stages.latents_io import read_latents
from tdpdm.stages.plan import plan_run
from tdpdm.stages.sample import generate
from tdpdm.stages.stage1_mechanisms import STAGE1_MECHANISMS, run_stage1
from tdpdm.stages.stage2_models import Stage2Input, stage2_model
from tdpdm.stages.synthetic_io import write_synthetic
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

BENCHMARK_ROWS = "benchmarks/results.jsonl"


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
            denoiser = model2.fit(ctx, data, plan.stage2, session if plan.stage2 else None)
            save_model(denoiser, ctx.layout.diffusion)
    return _publish(ctx, out.model, denoiser, session.recorded, session, n, out.info)


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
    )
    cfg = cfg.replace(stage1=stage1)  # a checked copy: the caller's config is untouched
    ctx = RunContext.start(cfg, log, telemetry)
    stage1_events = [event_from_dict(e) for e in manifest["events"]]
    n = int(manifest["n_records"])
    shape = (ctx.cfg.channels, ctx.cfg.image_size)
    if shape != (manifest.get("channels", 1), manifest.get("image_size", 28)):
        raise ValueError(f"{from_dir} was encoded for another image shape than {shape}")
    autoencoder = STAGE1_MECHANISMS[stage1.mechanism].blank(ctx.cfg)
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
    return _publish(ctx, autoencoder, denoiser, events, session, n, {"from": from_dir})


def _whole_runs_only(cfg: RunConfig) -> None:
    if cfg.privacy_unit:
        raise ValueError(
            "privacy_unit: a guarantee per unit is planned for both stages together; run the "
            "whole pipeline (tdpdm run), not encode and diffuse as separate jobs"
        )


def _publish(
    ctx: RunContext,
    autoencoder: torch.nn.Module,
    denoiser: torch.nn.Module,
    events: list,
    session: PrivacySession | None,
    n: int,
    latents_info: dict[str, Any],
) -> RunResult:
    """Post-processing of the DP models (sample, decode, write the release), then the
    custodian's evaluation; the release report carries nothing read from real data."""
    cfg, spec, layout = ctx.cfg, ctx.spec, ctx.layout
    with ctx.timed("sample") as details:
        images, labels = generate(
            denoiser,
            autoencoder,
            cfg.evaluation.synthetic_count,
            num_classes=spec.num_classes,
            steps=cfg.stage2.sampler_steps,
            guidance=cfg.stage2.guidance,
            seed=cfg.seed,
            device=cfg.device,
            progress=cfg.progress,
        )
        details["count"] = len(images)
    ctx.telemetry.stage(ctx.job_id, "sample", 1.0)

    events = [*events, *ctx.tuning_events]  # every trial influenced the selection
    bound = ctx.budget.bound(events, cap_epsilon=cfg.epsilon)  # per unit if the budget is
    privacy = privacy_section(
        bound,
        events,
        budget=ctx.budget.as_dict(),
        spent_epsilon=ctx.ledger.spent(cfg.dataset).epsilon,
        target_epsilon=cfg.epsilon,
        charge_id=session.charge.charge_id if session else None,
        ledger=storage.redact(cfg.ledger),
        dataset=cfg.dataset,
        n_records=n,
        mode=cfg.mode,
        mechanism=cfg.stage1.mechanism,
        evaluated=cfg.evaluation.enabled,
        custodian_losses=cfg.custodian_losses,
        subset=cfg.subset,
        own_data=cfg.data is not None,
    )
    names = list(spec.class_names)
    write_synthetic(
        layout.synthetic,
        images,
        labels,
        class_names=names,
        guarantee=parquet_guarantee(privacy, ctx.job_id, cfg.dataset),
    )
    grid = grid_png_bytes(
        images, labels, per_class=10, num_classes=spec.num_classes, class_names=names
    )
    storage.write_bytes_atomic(layout.release(artifacts.SAMPLES_PNG), grid)
    release = run_report.release_report(
        version=__version__,
        run_id=ctx.job_id,
        dataset=cfg.dataset,
        mode=cfg.mode,
        n_records=n,
        seed=cfg.seed,
        wall_time_s=time.perf_counter() - ctx.started,
        hardware=hardware(cfg.device),
        privacy=privacy,
        # data URIs may carry user-info or a signed query: the report holds them redacted
        config=cfg.as_dict()
        | {
            k: storage.redact(v)
            for k in ("data", "data_test", "data_dir")
            if (v := getattr(cfg, k))
        },
        stages=ctx.stages,
        latents=latents_info,
        artifacts=artifacts.release_listing(cfg.mode)
        | {"custodian": artifacts.custodian_listing(cfg.mode)},
        tuning=ctx.tuning,
    )
    run_report.write_report(layout.release, release, grid, private=False)

    metrics = _evaluate(ctx, images, labels)
    custodian = run_report.custodian_report(
        release,
        metrics=metrics,
        stages=ctx.stages,
        wall_time_s=time.perf_counter() - ctx.started,
        unnoised=ctx.losses if cfg.custodian_losses else None,
    )
    if cfg.evaluation.enabled:
        data = json.dumps(metrics, indent=2, sort_keys=True).encode()
        storage.write_bytes_atomic(layout.custodian(artifacts.EVALUATION_JSON), data, private=True)
    figures = _trade_off_figure(custodian)
    run_report.write_report(layout.custodian, custodian, grid, figures=figures, private=True)
    ctx.remove_work()
    ctx.telemetry.job(ctx.job_id, "succeeded")
    return RunResult(cfg.out, custodian)


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


def _evaluate(ctx: RunContext, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Custodian-only metrics (opt-in): they read the real train/test splits without noise (your
    own data: all its records and its `data_test` split); nothing from them is published."""
    cfg, spec = ctx.cfg, ctx.spec
    side = spec.image_shape  # (H, W); the data's public shape, as the models take it
    if not cfg.evaluation.enabled:
        return dict(run_report.EMPTY_METRICS)
    from tdpdm.evaluate.metrics import evaluate_synthetic

    ctx.log("evaluating (reads the real train/test splits; custodian-only metrics) ...")
    with ctx.timed("evaluate"):
        if ctx.source is None:
            train = load_split(cfg.dataset, ctx.data_dir, "train")
            test = load_split(cfg.dataset, ctx.data_dir, "test")
        else:
            train = _grey_squeezed(ctx.source.read())
            test = _grey_squeezed(test_split(cfg, ctx.spec).read())
        metrics = evaluate_synthetic(
            images,
            labels,
            real_train=train,
            real_test=test,
            num_classes=spec.num_classes,
            image_shape=side if spec.channels == 1 else (spec.channels, *side),
            dataset=cfg.dataset,
            device=cfg.device,
            seed=cfg.seed,
            cache_dir=cfg.cache_dir,
            classifier_epochs=cfg.evaluation.classifier_epochs,
            evaluator_epochs=cfg.evaluation.evaluator_epochs,
            inception_weights=cfg.evaluation.inception_weights,
            inception_sha256=cfg.evaluation.inception_sha256,
            progress=cfg.progress,
        )
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()}


def _grey_squeezed(split: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A source's (N, C, H, W) images in the synthetic layout: grey (N, H, W), RGB as it is."""
    images, labels = split
    return (images[:, 0] if images.shape[1] == 1 else images), labels


def _trade_off_figure(report: dict[str, Any]) -> dict[str, bytes]:
    """The privacy-utility plot of the benchmark rows for this data set, this run starred
    (custodian report only: the star is placed by a metric read from real data)."""
    from tdpdm.report.plots import run_privacy_utility_png

    results = os.path.join(os.path.dirname(os.path.dirname(__file__)), BENCHMARK_ROWS)
    caption = "Privacy-utility trade-off: benchmark rows and this run (star)"
    return {caption: run_privacy_utility_png(report, results)}
