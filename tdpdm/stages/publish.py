"""After the mechanisms: sample, decode and write the release, then the custodian's side.

Everything here is post-processing of the DP models, except `_evaluate`, which reads the real
splits without noise: its metrics go to the custodian report only. The release report is
written (and validated) before the evaluation runs, so it cannot carry a value read from real
data. Paths come from `artifacts.RunLayout`; the reports are built in `tdpdm.report.run_report`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import torch

from tdpdm import __version__
from tdpdm.data import storage
from tdpdm.data.loader import load_split
from tdpdm.privacy.session import PrivacySession
from tdpdm.privacy.statement import parquet_guarantee, privacy_section
from tdpdm.report import run_report
from tdpdm.report.grid import grid_png_bytes
from tdpdm.report.summary import hardware
from tdpdm.stages import artifacts
from tdpdm.stages.context import RunContext, test_split
from tdpdm.stages.sample import generate
from tdpdm.stages.synthetic_io import write_synthetic

BENCHMARK_ROWS = "benchmarks/results.jsonl"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
"""Where `BENCHMARK_ROWS` lies: the checkout this package runs from."""


def publish(
    ctx: RunContext,
    autoencoder: torch.nn.Module,
    denoiser: torch.nn.Module,
    events: list,
    session: PrivacySession | None,
    n: int,
    latents_info: dict[str, Any],
) -> dict[str, Any]:
    """Post-processing of the DP models (sample, decode, write the release), then the
    custodian's evaluation; the release report carries nothing read from real data. Returns
    the custodian report."""
    cfg, spec, layout = ctx.cfg, ctx.spec, ctx.layout
    with ctx.timed("sample") as details:
        images, labels = generate(
            denoiser,
            autoencoder,
            cfg.evaluation.synthetic_count,
            num_classes=spec.num_classes,
            steps=cfg.stage2.sampler_steps,
            guidance=cfg.stage2.guidance,
            sharpen=cfg.stage2.sharpen,
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
    return custodian


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

    results = os.path.join(REPO_ROOT, BENCHMARK_ROWS)
    caption = "Privacy-utility trade-off: benchmark rows and this run (star)"
    return {caption: run_privacy_utility_png(report, results)}
