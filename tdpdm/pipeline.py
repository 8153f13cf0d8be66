"""The whole two-stage pipeline on one machine: plan, charge, encode, diffuse, sample, report.

Order matters for privacy: the plan is calibrated and reserved on the ledger from the record
*count* alone, and only then is the private training split unsealed with the charge's grant.
Everything after the mechanisms (sampling, decoding, grids) is post-processing. Evaluation reads
the real train/test splits for the custodian and is labelled as such in the report.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from tdpdm import __version__
from tdpdm.config import RunConfig
from tdpdm.data import storage
from tdpdm.data.catalog import get_spec
from tdpdm.data.download import ensure_dataset
from tdpdm.data.loader import load_split
from tdpdm.data.private import PrivateTrainingSet
from tdpdm.models.autoencoder import ConvAutoencoder
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import event_from_dict, event_to_dict
from tdpdm.privacy.ledger import Budget, Ledger
from tdpdm.privacy.session import PrivacySession
from tdpdm.report.grid import grid_png_bytes
from tdpdm.report.html import render_report_html
from tdpdm.report.schema import report_to_json
from tdpdm.stages.deconvolve import fit_release_model
from tdpdm.stages.diffuse import train_diffusion
from tdpdm.stages.dpsgd import DPSGDPlan
from tdpdm.stages.encode import encode, train_autoencoder
from tdpdm.stages.latents_io import read_latents, write_latents
from tdpdm.stages.plan import PrivacyPlan, default_adjacency, plan_diffusion, plan_run
from tdpdm.stages.release import release_latents
from tdpdm.stages.sample import generate
from tdpdm.stages.synthetic_io import write_synthetic
from tdpdm.telemetry import Telemetry, get_telemetry

Log = Callable[[str], None]

STAGE1_MANIFEST = "stage1.json"
LATENTS = "latents/latents.parquet"
AUTOENCODER = "checkpoints/autoencoder.pt"
DIFFUSION_CKPT = "checkpoints/diffusion.pt"
BENCHMARK_ROWS = "benchmarks/results.jsonl"

METRICS_NOTE = (
    "Accuracy: the DPDM CNN trained on the synthetic images (epoch chosen on a synthetic "
    "validation split) and tested on the real test split. Inception Score and classifier-FD: from "
    "a CNN trained on the real training split (FD against the real test split). FID needs the "
    "pytorch-fid Inception weights file."
)


def epsilon_text(epsilon: float) -> str:
    """Epsilon rounded *up* to 3 decimals: a printed guarantee must never look stronger."""
    return f"{math.ceil(epsilon * 1000 - 1e-9) / 1000:.3f}"


@dataclass
class RunResult:
    out: str
    report: dict[str, Any]

    @property
    def epsilon(self) -> float:
        return float(self.report["privacy"]["epsilon"])


@dataclass
class _Context:
    """What every entry point needs before planning: nothing here reads a private record."""

    cfg: RunConfig
    spec: Any
    job_id: str
    data_dir: str
    ledger: Ledger
    budget: Budget
    telemetry: Telemetry
    log: Log
    started: float
    budget_is_new: bool = False
    tuning: dict[str, Any] | None = None
    """The stage-2 search's report section, when one ran."""
    tuning_events: list = field(default_factory=list)
    """What the search's trials spent (their own ledger charges): part of the run's epsilon."""

    @classmethod
    def start(cls, cfg: RunConfig, log: Log, telemetry: Telemetry | None) -> _Context:
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        # An output URI that cannot be written (odd scheme, NUL byte) must fail here, not after
        # the mechanisms ran and spent budget on results that could not be saved.
        storage.resolve(cfg.out)
        data_dir = ensure_dataset(
            cfg.dataset, cfg.data_dir, download_if_missing=cfg.download, progress=cfg.progress
        )
        ledger = Ledger(cfg.ledger)
        budget, budget_is_new = _budget_for(ledger, cfg, log)
        return cls(
            cfg=cfg,
            spec=get_spec(cfg.dataset),
            job_id=cfg.job_id or f"{cfg.dataset}-{cfg.mode}-{uuid.uuid4().hex[:8]}",
            data_dir=data_dir,
            ledger=ledger,
            budget=budget,
            budget_is_new=budget_is_new,
            telemetry=telemetry or get_telemetry(),
            log=log,
            started=started,
        )

    def begin(self, events: list) -> PrivacySession:
        """Reserve `events` on the ledger: refused here, ledger untouched, before any read."""
        if self.budget_is_new:
            b = self.budget
            self.budget = self.ledger.set_budget(
                self.cfg.dataset, b.epsilon, b.delta, b.adjacency.value
            )
            self.budget_is_new = False
            self.log(
                f"no budget for {self.cfg.dataset} in {self.ledger.store.location}: set it "
                f"to {self.budget.describe()}"
            )
        session = PrivacySession.begin(self.ledger, self.cfg.dataset, self.job_id, events)
        self.telemetry.job(self.job_id, "running")
        _report_budget(self.telemetry, self.ledger, self.cfg.dataset, self.budget)
        return session


@contextlib.contextmanager
def _charged(ctx: _Context, session: PrivacySession, was_read: Callable[[], bool]):
    """Settle the charge at what ran; a job that failed before reading anything is cancelled."""
    try:
        yield
    except BaseException as err:
        if not was_read():
            session.cancel_unread(note=f"failed before reading any record: {err}")
        else:
            session.settle(note=f"failed after reading records: {type(err).__name__}")
        ctx.telemetry.job(ctx.job_id, "failed")
        raise
    session.settle(note=f"completed {ctx.job_id}")
    _report_budget(ctx.telemetry, ctx.ledger, ctx.cfg.dataset, ctx.budget)


def run_pipeline(
    cfg: RunConfig,
    log: Log = print,
    telemetry: Telemetry | None = None,
    records: PrivateTrainingSet | None = None,
) -> RunResult:
    """Both stages in one job, planned and charged together up front.

    `records` replaces the configured training set (the privacy audit passes one with its
    canaries appended); it is read under this run's charge like any other."""
    ctx = _Context.start(cfg, log, telemetry)
    _require_backend(cfg)
    if records is None:
        records = PrivateTrainingSet(cfg.dataset, ctx.data_dir, cfg.subset, cfg.seed)
    n = records.n_records()
    log(
        f"planning {cfg.mode} run on {n} {cfg.dataset} records: target epsilon {cfg.epsilon:g} "
        f"at delta {ctx.budget.delta:g} ({ctx.budget.adjacency.value}); calibrating noise ..."
    )
    plan = plan_run(cfg, n, ctx.budget.adjacency, ctx.budget.delta)
    session = ctx.begin(plan.events())
    stages: list[dict[str, Any]] = []
    with _charged(ctx, session, lambda: records.reads > 0), _ray_for(cfg):
        autoencoder, latents, labels, info = _stage1(ctx, plan, session, records, stages)
        release_uri = storage.join(cfg.out, LATENTS) if cfg.mode == "released" else None
        denoiser = _stage2(
            ctx,
            plan.diffusion,
            session,
            latents,
            labels,
            stages,
            release_uri=release_uri,
            latents_uri=storage.join(cfg.out, LATENTS),
            stage1_events=list(session.recorded),
        )
    return _publish(ctx, autoencoder, denoiser, session.recorded, session, n, info, stages)


def _require_backend(cfg: RunConfig) -> None:
    """Refuse a Ray run where Ray is missing before planning or reserving anything."""
    if cfg.distributed.backend == "ray":
        from tdpdm.distributed.ray_runtime import import_ray

        import_ray()


def _ray_for(cfg: RunConfig) -> contextlib.AbstractContextManager[Any]:
    """One Ray for the whole job (stage 1's Train workers, stage 2's Tune trials) when the
    backend is Ray: the embedded default starts a local one and stops it at the end."""
    if cfg.distributed.backend != "ray":
        return contextlib.nullcontext()
    from tdpdm.distributed.ray_runtime import ray_session

    return ray_session(cfg.distributed.address)


def run_encode_stage(
    cfg: RunConfig, log: Log = print, telemetry: Telemetry | None = None
) -> dict[str, Any]:
    """Stage 1 alone; writes the autoencoder, the latents and `stage1.json` for `diffuse`.

    In `private` mode stage 1 is calibrated to the whole `cfg.epsilon`; `tdpdm diffuse` then
    needs a larger target for the two stages together."""
    ctx = _Context.start(cfg, log, telemetry)
    _require_backend(cfg)
    records = PrivateTrainingSet(cfg.dataset, ctx.data_dir, cfg.subset, cfg.seed)
    n = records.n_records()
    plan = plan_run(cfg, n, ctx.budget.adjacency, ctx.budget.delta, encoder_only=True)
    session = ctx.begin(plan.events())
    stages: list[dict[str, Any]] = []
    with _charged(ctx, session, lambda: records.reads > 0):
        _stage1(ctx, plan, session, records, stages)
    bound = compute_epsilon(session.recorded, ctx.budget.delta, ctx.budget.adjacency)
    manifest = {
        "dataset": cfg.dataset,
        "mode": cfg.mode,
        "job_id": ctx.job_id,
        "n_records": n,
        "seed": cfg.seed,
        "latent_dim": cfg.stage1.latent_dim,
        "mechanism": cfg.stage1.mechanism,
        "vae_hidden": cfg.stage1.vae_hidden,
        "width": cfg.stage1.width,
        "events": [event_to_dict(e) for e in session.recorded],
        "guarantee": bound.as_dict(),
        "stages": stages,
    }
    storage.write_bytes_atomic(
        storage.join(cfg.out, STAGE1_MANIFEST), json.dumps(manifest, indent=2).encode()
    )
    return manifest


def run_diffuse_stage(
    cfg: RunConfig, from_dir: str, log: Log = print, telemetry: Telemetry | None = None
) -> RunResult:
    """Stage 2 on the output of `run_encode_stage`, then sampling and the report.

    Private latents are sensitive: in `private` mode reading them is charged (DP-SGD calibrated
    so that stage 1 and stage 2 together meet `cfg.epsilon`)."""
    manifest = _read_manifest(from_dir)
    for key in ("dataset", "mode"):
        if manifest[key] != getattr(cfg, key):
            raise ValueError(
                f"{from_dir} was encoded for {key} {manifest[key]!r}, not {getattr(cfg, key)!r}"
            )
    cfg.stage1.latent_dim, cfg.stage1.width = manifest["latent_dim"], manifest["width"]
    ctx = _Context.start(cfg, log, telemetry)
    stage1_events = [event_from_dict(e) for e in manifest["events"]]
    n = int(manifest["n_records"])
    cfg.stage1.mechanism = manifest.get("mechanism", "dpsgd-autoencoder")
    if cfg.stage1.mechanism == "lipschitz-vae":
        from tdpdm.stages.lipschitz_release import new_lipschitz_vae

        cfg.stage1.vae_hidden = manifest["vae_hidden"]
        autoencoder = new_lipschitz_vae(cfg)
    else:
        autoencoder = ConvAutoencoder(cfg.stage1.latent_dim, cfg.stage1.width)
    _load_state(storage.join(from_dir, AUTOENCODER), autoencoder)
    latents_uri = storage.join(from_dir, LATENTS)
    stages: list[dict[str, Any]] = []
    if cfg.mode == "private" and cfg.tune.trials:
        # Each trial reserves its own charge and reads the private latents under it.
        denoiser = _stage2(
            ctx,
            None,
            None,
            None,
            None,
            stages,
            latents_uri=latents_uri,
            stage1_events=stage1_events,
            n_records=n,
        )
        events, session = stage1_events, None
    elif cfg.mode == "private":
        plan2 = plan_diffusion(cfg, n, ctx.budget.adjacency, ctx.budget.delta, stage1_events)
        session = ctx.begin([plan2.event()])
        read = [False]
        with _charged(ctx, session, lambda: read[0]):
            if not session.grant.is_active():
                raise PermissionError("private latents need an open ledger charge")
            latents, labels, _ = read_latents(latents_uri, ctx.spec.num_classes)
            read[0] = True
            if len(latents) != n:
                raise ValueError(f"{latents_uri}: {len(latents)} rows, manifest says {n}")
            denoiser = _stage2(ctx, plan2, session, latents, labels, stages)
        events = [*stage1_events, *session.recorded]
    else:
        # a DP release: post-processing
        latents, labels, _ = read_latents(latents_uri, ctx.spec.num_classes)
        denoiser = _stage2(
            ctx,
            None,
            None,
            latents,
            labels,
            stages,
            release_uri=latents_uri,
            latents_uri=latents_uri,
            stage1_events=stage1_events,
        )
        events, session = stage1_events, None
    return _publish(ctx, autoencoder, denoiser, events, session, n, {"from": from_dir}, stages)


def _publish(
    ctx: _Context,
    autoencoder: ConvAutoencoder,
    denoiser: torch.nn.Module,
    events: list,
    session: PrivacySession | None,
    n: int,
    latents_info: dict[str, Any],
    stages: list[dict[str, Any]],
) -> RunResult:
    """Post-processing of the DP models (sample, decode, write), then evaluation and report."""
    cfg, spec = ctx.cfg, ctx.spec
    t = time.perf_counter()
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
    stages.append(
        {
            "name": "sample",
            "wall_time_s": time.perf_counter() - t,
            "details": {"count": len(images)},
        }
    )
    ctx.telemetry.stage(ctx.job_id, "sample", 1.0)

    events = [*events, *ctx.tuning_events]  # every trial influenced the selection
    bound = compute_epsilon(events, ctx.budget.delta, ctx.budget.adjacency)
    privacy = _privacy_section(ctx, events, session, bound, n)
    synthetic_uri = storage.join(cfg.out, "synthetic", "part-0.parquet")
    write_synthetic(
        synthetic_uri,
        images,
        labels,
        class_names=list(spec.class_names),
        guarantee=_parquet_guarantee(privacy, ctx.job_id, cfg.dataset),
    )

    metrics = _evaluate(cfg, images, labels, ctx.data_dir, stages, ctx.log)
    report = {
        "tdpdm_version": __version__,
        "run_id": ctx.job_id,
        "dataset": cfg.dataset,
        "mode": cfg.mode,
        "n_records": n,
        "seed": cfg.seed,
        "wall_time_s": time.perf_counter() - ctx.started,
        "hardware": hardware(cfg.device),
        "privacy": privacy,
        "metrics": metrics,
        "metrics_note": METRICS_NOTE,
        "config": cfg.as_dict(),
        "stages": stages,
        "latents": latents_info,
        "artifacts": {
            "synthetic": "synthetic/part-0.parquet",
            "samples_png": "samples.png",
            "report_html": "report.html",
            "report_json": "report.json",
            "latents": LATENTS,
            "autoencoder": AUTOENCODER,
            "diffusion": DIFFUSION_CKPT,
        },
    }
    if ctx.tuning is not None:
        report["tuning"] = ctx.tuning
    grid = grid_png_bytes(
        images,
        labels,
        per_class=10,
        num_classes=spec.num_classes,
        class_names=list(spec.class_names),
    )
    storage.write_bytes_atomic(storage.join(cfg.out, "samples.png"), grid)
    storage.write_bytes_atomic(
        storage.join(cfg.out, "report.json"), report_to_json(report).encode()
    )
    html = render_report_html(report, grid_png=grid, extra_images=_trade_off_figure(report))
    storage.write_bytes_atomic(storage.join(cfg.out, "report.html"), html.encode())
    ctx.telemetry.job(ctx.job_id, "succeeded")
    return RunResult(cfg.out, report)


def _trade_off_figure(report: dict[str, Any]) -> dict[str, bytes]:
    """The privacy-utility plot of the benchmark rows for this data set, this run starred
    (rows from the source tree's benchmarks/results.jsonl when it is there)."""
    from tdpdm.report.plots import run_privacy_utility_png

    results = os.path.join(os.path.dirname(os.path.dirname(__file__)), BENCHMARK_ROWS)
    caption = "Privacy-utility trade-off: benchmark rows and this run (star)"
    return {caption: run_privacy_utility_png(report, results)}


def _budget_for(ledger: Ledger, cfg: RunConfig, log: Log) -> tuple[Budget, bool]:
    """The data set's budget, or (not yet written) the one this run would set: (budget, new).

    A new budget is only written when the run's plan is reserved, so a run refused earlier (bad
    delta, impossible epsilon) leaves the ledger as it found it."""
    budget = ledger.budget(cfg.dataset)
    if budget is None:
        adjacency = default_adjacency(cfg.mode)
        return Budget(float(cfg.epsilon), float(cfg.delta), adjacency), True
    if budget.delta != cfg.delta:
        log(
            f"note: the {cfg.dataset} budget is stated at delta {budget.delta:g}; the run is "
            f"accounted at that delta, not {cfg.delta:g}"
        )
    return budget, False


def _report_budget(telemetry: Telemetry, ledger: Ledger, dataset: str, budget: Budget) -> None:
    telemetry.privacy(dataset, ledger.spent(dataset).epsilon, budget.epsilon, budget.delta)


def _progress(telemetry: Telemetry, job_id: str, stage: str, total: int, batch: int):
    last = [time.perf_counter(), 0]

    def on_step(step: int, loss: float) -> None:
        if step % 10 and step != total:
            return
        now = time.perf_counter()
        rate = (step - last[1]) * batch / max(now - last[0], 1e-9)
        telemetry.step(stage, step - last[1], loss if np.isfinite(loss) else 0.0, rate)
        telemetry.stage(job_id, stage, step / total)
        last[:] = [now, step]

    return on_step


def _stage1(
    ctx: _Context,
    plan: PrivacyPlan,
    session: PrivacySession,
    records: PrivateTrainingSet,
    stages: list[dict[str, Any]],
):
    """Read the private records under the charge; train the DP autoencoder; produce latents
    (a DP release in `released` mode, a sensitive intermediate in `private` mode)."""
    cfg = ctx.cfg
    if cfg.stage1.mechanism == "lipschitz-vae":
        return _stage1_lipschitz(ctx, plan, session, records, stages)
    images, labels = records.open(session.grant)
    t = time.perf_counter()
    ctx.log(
        f"stage 1: DP-SGD autoencoder, {plan.encoder.steps} steps, "
        f"sigma {plan.encoder.noise_multiplier:.3f}, q {plan.encoder.sampling_rate:.4f}"
    )
    if cfg.distributed.backend == "ray":
        autoencoder, execution = _train_autoencoder_on_ray(ctx, plan.encoder, session, images)
    else:
        autoencoder = train_autoencoder(
            images,
            cfg.stage1,
            plan.encoder,
            session,
            device=cfg.device,
            seed=cfg.seed,
            progress=cfg.progress,
            on_step=_progress(
                ctx.telemetry,
                ctx.job_id,
                "encoder",
                plan.encoder.steps,
                plan.encoder.expected_batch_size,
            ),
        )
        execution = {"backend": "local", "num_workers": 1}
    stages.append(
        {
            "name": "encoder",
            "wall_time_s": time.perf_counter() - t,
            "details": {"steps": plan.encoder.steps} | execution,
        }
    )
    _save_model(autoencoder, storage.join(cfg.out, AUTOENCODER))

    t = time.perf_counter()
    latents = encode(autoencoder, images, cfg.device)
    if cfg.mode == "released":
        released = release_latents(
            latents,
            labels,
            num_classes=ctx.spec.num_classes,
            cfg=cfg.release,
            event=plan.release_event(),
            session=session,
            seed=cfg.seed,
        )
        latents, labels = released.latents, released.labels
        info = {"kind": "dp_release", **released.metadata()}
        meta = info | {"sensitive": False, "guarantee": _release_guarantee(plan, session)}
    else:
        info = {"kind": "sensitive_intermediate"}
        meta = info | {
            "sensitive": True,
            "warning": "private latents: access-controlled, never publish",
        }
    write_latents(
        storage.join(cfg.out, LATENTS),
        latents,
        labels,
        meta,
        seed=cfg.seed,
        label_vectors=released.label_vectors if cfg.mode == "released" else None,
    )
    del images
    stages.append(
        {
            "name": "latents",
            "wall_time_s": time.perf_counter() - t,
            "details": {"mode": cfg.mode, "dim": int(latents.shape[1])},
        }
    )
    return autoencoder, latents, labels, info


def _train_autoencoder_on_ray(
    ctx: _Context, plan: DPSGDPlan, session: PrivacySession, images: np.ndarray
) -> tuple[ConvAutoencoder, dict[str, Any]]:
    """Stage 1's DP-SGD on a Ray Train worker group (a local Ray unless an address is set).

    The records, opened under this job's charge, go to Ray's object store for the workers;
    the steps of the final checkpoint are charged on `session` (see `distributed.stage1_train`).
    """
    from tdpdm.distributed.stage1_train import train_dpsgd_on_ray
    from tdpdm.stages.encode import images_to_tensor, new_autoencoder, reconstruction_loss

    cfg = ctx.cfg
    d = cfg.distributed
    if cfg.device.startswith("cuda") and not d.use_gpu:
        ctx.log("note: device is cuda but distributed.use_gpu is false: Ray workers use CPUs")
    outcome = train_dpsgd_on_ray(
        functools.partial(new_autoencoder, cfg.stage1, cfg.seed),
        [images_to_tensor(images)],
        reconstruction_loss,
        plan,
        session,
        cfg=d,
        storage_path=d.storage_path or storage.join(cfg.out, "ray"),
        lr=cfg.stage1.lr,
        seed=cfg.seed,
        grad_sample_mode=cfg.stage1.grad_sample_mode,
        progress=cfg.progress,
        # Unique: Ray Train resumes a run whose name it finds in storage, and a new charge must
        # never continue another job's checkpoint.
        run_name=f"{ctx.job_id}-stage1-{uuid.uuid4().hex[:6]}",
    )
    _report_ray_steps(ctx, "encoder", outcome)
    return outcome.model, outcome.as_details()


def _report_ray_steps(ctx: _Context, stage: str, outcome: Any) -> None:
    """Workers do not export per-step metrics: the driver reports the charged steps at the end."""
    loss = outcome.final_loss if math.isfinite(outcome.final_loss) else 0.0
    ctx.telemetry.step(stage, outcome.steps, loss, outcome.samples_per_second)
    ctx.telemetry.stage(ctx.job_id, stage, 1.0)


def _stage1_lipschitz(
    ctx: _Context,
    plan: PrivacyPlan,
    session: PrivacySession,
    records: PrivateTrainingSet,
    stages: list[dict[str, Any]],
):
    """`lipschitz-vae`: DP-SGD VAE, exact Lipschitz bound checked on data, Gaussian release."""
    from tdpdm.stages import lipschitz_release as lr

    cfg = ctx.cfg
    images, labels = records.open(session.grant)
    t = time.perf_counter()
    ctx.log(
        f"stage 1: Lipschitz VAE (DP-SGD), {plan.encoder.steps} steps, "
        f"sigma {plan.encoder.noise_multiplier:.3f}, q {plan.encoder.sampling_rate:.4f}"
    )
    if cfg.distributed.backend == "ray":
        from tdpdm.distributed.stage1_train import train_dpsgd_on_ray

        d = cfg.distributed
        noise_std = lr.training_noise_std(cfg, plan.release_event())
        outcome = train_dpsgd_on_ray(
            functools.partial(lr.make_vae, cfg.stage1.latent_dim, cfg.stage1.vae_hidden, noise_std),
            [lr.images_to_tensor(images)],
            lr.vae_loss,
            plan.encoder,
            session,
            cfg=d,
            storage_path=d.storage_path or storage.join(cfg.out, "ray"),
            lr=cfg.stage1.lr,
            seed=cfg.seed,
            grad_sample_mode=cfg.stage1.grad_sample_mode,
            progress=cfg.progress,
            run_name=f"{ctx.job_id}-stage1-{uuid.uuid4().hex[:6]}",
        )
        model, execution = outcome.model, outcome.as_details()
        model.project_weights()
        _report_ray_steps(ctx, "encoder", outcome)
    else:
        model = lr.train_lipschitz_vae(
            images,
            cfg,
            plan.encoder,
            plan.release_event(),
            session,
            progress=cfg.progress,
            on_step=_progress(
                ctx.telemetry,
                ctx.job_id,
                "encoder",
                plan.encoder.steps,
                plan.encoder.expected_batch_size,
            ),
        )
        execution = {"backend": "local", "num_workers": 1}
    stages.append(
        {
            "name": "encoder",
            "wall_time_s": time.perf_counter() - t,
            "details": {"steps": plan.encoder.steps, "mechanism": "lipschitz-vae"} | execution,
        }
    )
    t = time.perf_counter()
    released = lr.release(
        model,
        images,
        labels,
        num_classes=ctx.spec.num_classes,
        label_scale=cfg.release.label_scale,
        event=plan.release_event(),
        session=session,
        seed=cfg.seed,
    )
    del images
    ctx.log(
        f"Lipschitz release: L = {released.lipschitz_bound:.6f} (largest observed ratio "
        f"{released.check.max_ratio:.4f}), sensitivity {released.sensitivity:.3f}, "
        f"noise std {released.noise_std:.3f}"
    )
    _save_model(model, storage.join(cfg.out, AUTOENCODER))
    info = released.info()
    meta = info | {"sensitive": False, "guarantee": _release_guarantee(plan, session)}
    write_latents(
        storage.join(cfg.out, LATENTS),
        released.latents,
        released.labels,
        meta,
        seed=cfg.seed,
        label_vectors=released.label_vectors,
    )
    stages.append(
        {
            "name": "latents",
            "wall_time_s": time.perf_counter() - t,
            "details": {"mode": cfg.mode, "dim": int(released.latents.shape[1])},
        }
    )
    return model, released.latents, released.labels, info


def _stage2(
    ctx: _Context,
    plan: DPSGDPlan | None,
    session: PrivacySession | None,
    latents: np.ndarray,
    labels: np.ndarray,
    stages: list[dict[str, Any]],
    release_uri: str | None = None,
    latents_uri: str | None = None,
    stage1_events: list | None = None,
    n_records: int | None = None,
):
    """Train the stage-2 model, or with `tune.trials` search for it (`_tuned_stage2`)."""
    cfg = ctx.cfg
    t = time.perf_counter()
    if release_uri is not None and cfg.stage2.released_model == "deconvolution":
        ctx.log("stage 2: Gaussian mixture deconvolved from the DP release (post-processing)")
        model = fit_release_model(release_uri, cfg.stage2, seed=cfg.seed, progress=cfg.progress)
        stages.append(
            {
                "name": "deconvolution",
                "wall_time_s": time.perf_counter() - t,
                "details": {"dp_sgd": False, "components": model.log_weights.numel()},
            }
        )
        _save_model(model, storage.join(cfg.out, DIFFUSION_CKPT))
        return model
    if cfg.tune.trials:
        if latents_uri is None or stage1_events is None:
            raise ValueError("a stage-2 search needs the latents' location and stage 1's events")
        n = n_records if n_records is not None else len(latents)
        return _tuned_stage2(ctx, latents_uri, stage1_events, n, stages)
    steps = plan.steps if plan else 0
    ctx.log(
        "stage 2: latent diffusion ("
        + (
            f"DP-SGD, {steps} steps, sigma {plan.noise_multiplier:.3f}"
            if plan
            else "on the DP release"
        )
        + ")"
    )
    denoiser = train_diffusion(
        latents,
        labels,
        cfg.stage2,
        num_classes=ctx.spec.num_classes,
        plan=plan,
        session=session if plan else None,
        device=cfg.device,
        seed=cfg.seed,
        progress=cfg.progress,
        on_step=_progress(
            ctx.telemetry, ctx.job_id, "diffusion", max(steps, 1), cfg.stage2.batch_size
        ),
    )
    stages.append(
        {
            "name": "diffusion",
            "wall_time_s": time.perf_counter() - t,
            "details": {"dp_sgd": plan is not None, "steps": steps},
        }
    )
    _save_model(denoiser, storage.join(cfg.out, DIFFUSION_CKPT))
    return denoiser


def _tuned_stage2(
    ctx: _Context, latents_uri: str, stage1_events: list, n: int, stages: list[dict[str, Any]]
) -> torch.nn.Module:
    """Ray Tune over stage 2; the best completed trial's EMA model feeds sampling."""
    from tdpdm.distributed.tune_stage2 import run_tune_search

    cfg = ctx.cfg
    t = time.perf_counter()
    outcome = run_tune_search(
        cfg,
        run_id=ctx.job_id,
        n_records=n,
        num_classes=ctx.spec.num_classes,
        latent_dim=cfg.stage1.latent_dim,
        latents_uri=latents_uri,
        stage1_events=stage1_events,
        adjacency=ctx.budget.adjacency,
        delta=ctx.budget.delta,
        log=ctx.log,
    )
    ctx.tuning, ctx.tuning_events = outcome.section, outcome.events
    cfg.stage2 = replace(cfg.stage2, **outcome.best["hyperparameters"])
    _report_budget(ctx.telemetry, ctx.ledger, cfg.dataset, ctx.budget)
    stages.append(
        {
            "name": "tune",
            "wall_time_s": time.perf_counter() - t,
            "details": {
                "trials": len(outcome.section["trials"]),
                "selected": outcome.best["trial_id"],
                "dp_sgd": cfg.mode == "private",
            },
        }
    )
    _save_model(outcome.denoiser, storage.join(cfg.out, DIFFUSION_CKPT))
    return outcome.denoiser


def _save_model(model: torch.nn.Module, uri: str) -> None:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    storage.write_bytes_atomic(uri, buf.getvalue())


_MANIFEST_FIELDS = {
    "dataset": str,
    "mode": str,
    "n_records": int,
    "latent_dim": int,
    "width": int,
    "events": list,
}


def _read_manifest(from_dir: str) -> dict[str, Any]:
    """`stage1.json` of an encode run, checked: a damaged one fails in one line naming it."""
    uri = storage.join(from_dir, STAGE1_MANIFEST)
    source = storage.redact(uri)
    raw = storage.read_bytes(uri)
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{source}: not a JSON manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{source}: the manifest is not a JSON object")
    for key, kind in _MANIFEST_FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise ValueError(f"{source}: missing or invalid {key!r} ({value!r:.60})")
    try:
        for event in manifest["events"]:
            event_from_dict(event)
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{source}: invalid privacy event ({err})") from None
    return manifest


def _load_state(uri: str, model: torch.nn.Module) -> None:
    """Load a checkpoint into `model`; a damaged or foreign file fails in one short line."""
    raw = storage.read_bytes(uri)
    try:
        # weights_only: a checkpoint is untrusted input and must not run pickled code.
        model.load_state_dict(torch.load(io.BytesIO(raw), weights_only=True))
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(
            f"{storage.redact(uri)}: not a readable checkpoint for this model ({first})"
        ) from None


def _release_guarantee(plan: PrivacyPlan, session: PrivacySession) -> dict[str, Any]:
    bound = compute_epsilon(session.recorded, plan.delta, plan.adjacency)
    return bound.as_dict() | {"events": [event_to_dict(e) for e in session.recorded]}


def _privacy_section(ctx: _Context, events, session, bound, n: int) -> dict[str, Any]:
    cfg, ledger, budget = ctx.cfg, ctx.ledger, ctx.budget
    covered = ["the encoder/decoder weights", "the diffusion model", "the synthetic data set"]
    if cfg.mode == "released":
        covered.insert(1, "the released latents (latents/latents.parquet)")
    if cfg.stage1.mechanism == "lipschitz-vae":
        covered[:2] = [
            "the VAE encoder/decoder weights (trained on the private records with DP-SGD; no "
            "public data set was used)",
            "the released latents and labels (latents/latents.parquet): one Gaussian release per "
            "record of [mu(x), scaled one-hot label], mu the encoder mean with a proven Lipschitz "
            "bound L (exact product of its layers' spectral norms, checked on data), sensitivity "
            "sqrt((28 L)^2 + 2 b^2) for pixels in [0, 1]^784",
        ]
    statement = (
        f"({epsilon_text(bound.epsilon)}, {bound.delta:g})-differential privacy for each of the "
        f"{n} training records of {cfg.dataset}, with neighbouring data sets differing by "
        f"{bound.adjacency.in_words()}. Covered: {', '.join(covered)}; anything computed from "
        "them alone is post-processing and covered too."
    )
    not_covered = [
        "the number of training records is treated as public (it sets the sampling rate)",
        "the evaluation metrics and the evaluation classifier: they read the real data",
        "noise is drawn with torch's default generator (Opacus secure_mode off): floating-point "
        "side channels are out of scope",
    ]
    if cfg.mode == "private":
        not_covered.insert(
            0,
            "latents/latents.parquet: private latents are a sensitive "
            "intermediate and must not leave the custodian",
        )
    else:
        not_covered.insert(
            0,
            "the release is DP only under replace-one adjacency: a record's "
            "presence (as opposed to its value) is not hidden",
        )
    spent = ledger.spent(cfg.dataset)
    return {
        "epsilon": bound.epsilon,
        "delta": bound.delta,
        "adjacency": bound.adjacency.value,
        "accountant": bound.accountant,
        "target_epsilon": cfg.epsilon,
        "events": [event_to_dict(e) for e in events],
        "budget": budget.as_dict() | {"spent_epsilon_after_run": spent.epsilon},
        "charge_id": session.charge.charge_id if session else None,
        "ledger": storage.redact(cfg.ledger),
        "statement": statement,
        "not_covered": not_covered,
    }


def _parquet_guarantee(privacy: dict[str, Any], job_id: str, dataset: str) -> dict[str, Any]:
    keys = ("epsilon", "delta", "adjacency", "accountant", "events", "statement")
    return {k: privacy[k] for k in keys} | {"run_id": job_id, "dataset": dataset}


def _evaluate(cfg: RunConfig, images, labels, data_dir, stages, log) -> dict[str, Any]:
    empty = {"accuracy": None, "inception_score": None, "classifier_fd": None, "fid": None}
    if not cfg.evaluation.enabled:
        return empty
    from tdpdm.evaluate.metrics import evaluate_synthetic

    t = time.perf_counter()
    log("evaluating (reads the real train/test splits; custodian-only metrics) ...")
    metrics = evaluate_synthetic(
        images,
        labels,
        real_train=load_split(cfg.dataset, data_dir, "train"),
        real_test=load_split(cfg.dataset, data_dir, "test"),
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
    stages.append({"name": "evaluate", "wall_time_s": time.perf_counter() - t, "details": {}})
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()}


def hardware(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu
    return {
        "device": device,
        "device_name": name,
        "cpu": cpu,
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def describe(report: dict[str, Any]) -> str:
    """The lines a person reads at the end of a run."""
    p, m = report["privacy"], report["metrics"]

    def fmt(v, pct=False):
        if v is None:
            return "n/a"
        return f"{100 * v:.2f} %" if pct else f"{v:.3f}"

    adjacency = Adjacency(p["adjacency"])
    lines = [
        f"guarantee: epsilon = {epsilon_text(p['epsilon'])} (upper bound), delta = {p['delta']:g}, "
        f"adjacency = {adjacency.value} ({adjacency.in_words()}); accountant: {p['accountant']}",
        "mechanisms: " + "; ".join(json.dumps(e, sort_keys=True) for e in p["events"]),
        f"budget {report['dataset']}: spent "
        f"{epsilon_text(p['budget']['spent_epsilon_after_run'])} of {p['budget']['epsilon']:g}",
        f"metrics (custodian-only, read real data): accuracy {fmt(m['accuracy'], True)}, "
        f"IS {fmt(m['inception_score'])}, classifier-FD {fmt(m['classifier_fd'])}, "
        f"FID {fmt(m['fid'])}",
        f"wall time: {report['wall_time_s']:.0f} s",
    ]
    return "\n".join(lines)
