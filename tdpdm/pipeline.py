"""The whole two-stage pipeline: plan, charge, stage 1, stage 2, sample, report.

Order matters for privacy: the plan is calibrated and reserved on the ledger from the record
*count* alone, and only then is the private training split unsealed with the charge's grant.
Everything after the mechanisms (sampling, decoding, grids) is post-processing. Every mechanism
draws its randomness from its own fresh secret key (`tdpdm.privacy.randomness`); `cfg.seed`
only sets public things (initial weights, the synthetic sampler).

Outputs are split (`tdpdm.stages.artifacts`): `release/` holds exactly what the guarantee
covers; `custodian/` holds evaluation metrics read from real data, private latents, the stage-1
manifest and `work/` (checkpoints with secret generator state, deleted when the run succeeds).
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
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
from tdpdm.privacy import statement as words
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import event_from_dict, event_to_dict
from tdpdm.privacy.ledger import Budget, Ledger
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.report.grid import grid_png_bytes
from tdpdm.report.html import render_report_html
from tdpdm.report.schema import report_to_json, validate_report
from tdpdm.report.summary import describe, hardware
from tdpdm.report.text import epsilon_text
from tdpdm.stages import artifacts
from tdpdm.stages.artifacts import RunLayout, load_model_state, save_model
from tdpdm.stages.deconvolve import fit_release_model
from tdpdm.stages.diffuse import train_diffusion
from tdpdm.stages.dpsgd import DPSGDPlan, train_dpsgd
from tdpdm.stages.encode import encode, images_to_tensor, new_autoencoder, reconstruction_loss
from tdpdm.stages.latents_io import read_latents, write_latents
from tdpdm.stages.plan import PrivacyPlan, default_adjacency, plan_diffusion, plan_run
from tdpdm.stages.release import release_latents
from tdpdm.stages.sample import generate
from tdpdm.stages.synthetic_io import write_synthetic
from tdpdm.telemetry import Telemetry, get_telemetry

__all__ = ["RunResult", "describe", "epsilon_text", "run_diffuse_stage", "run_encode_stage"]

Log = Callable[[str], None]

BENCHMARK_ROWS = "benchmarks/results.jsonl"

METRICS_NOTE = (
    "Custodian-only (read the real data without noise; never publish). Accuracy: the DPDM CNN "
    "trained on the synthetic images (epoch chosen on a synthetic validation split) and tested "
    "on the real test split. Inception Score and classifier-FD: from a CNN trained on the real "
    "training split (FD against the real test split). FID needs the pytorch-fid Inception "
    "weights file."
)
RELEASE_METRICS_NOTE = (
    "No metric read from real data is published: evaluation (opt-in, evaluation.enabled) "
    "writes its figures to the custodian part only (custodian/report.json)."
)
EMPTY_METRICS = {"accuracy": None, "inception_score": None, "classifier_fd": None, "fid": None}


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
    layout: RunLayout
    budget_is_new: bool = False
    tuning: dict[str, Any] | None = None
    """The stage-2 search's report section, when one ran."""
    tuning_events: list = field(default_factory=list)
    """What the search's trials spent (their own ledger charges): part of the run's epsilon."""
    work_dirs: list[str] = field(default_factory=list)
    """Custodian scratch (checkpoints with secret generator state) to delete on success."""
    losses: dict[str, float] = field(default_factory=dict)
    """Last training loss per stage: kept only when the custodian opted in."""

    @classmethod
    def start(cls, cfg: RunConfig, log: Log, telemetry: Telemetry | None) -> _Context:
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)  # public: initial weights and the synthetic sampler only
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
            layout=RunLayout(cfg.out),
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
    """Settle the charge at what ran. A job that failed before reading anything is cancelled;
    one that failed after reading (even in validation) is charged its full plan: whether and how
    it failed can depend on the records."""
    try:
        yield
    except BaseException as err:
        if not was_read():
            session.cancel_unread(note=f"failed before reading any record: {err}")
        else:
            session.settle_at_full_plan(
                note=f"failed after reading records ({type(err).__name__}): charged its full plan"
            )
        ctx.telemetry.job(ctx.job_id, "failed")
        raise
    session.settle(note=f"completed {ctx.job_id}")
    _report_budget(ctx.telemetry, ctx.ledger, ctx.cfg.dataset, ctx.budget)


def training_set(cfg: RunConfig, data_dir: str) -> PrivateTrainingSet:
    """The configured training split; a subset gets its own secret per-record draws."""
    key = MechanismKey.fresh("subset") if cfg.subset is not None else None
    return PrivateTrainingSet(cfg.dataset, data_dir, cfg.subset, subset_key=key)


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
        records = training_set(cfg, ctx.data_dir)
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
        latents_uri = ctx.layout.latents(cfg.mode)
        denoiser = _stage2(
            ctx,
            plan.diffusion,
            session,
            latents,
            labels,
            stages,
            release_uri=latents_uri if cfg.mode == "released" else None,
            latents_uri=latents_uri,
            stage1_events=list(session.recorded),
            n_records=n,
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
    """Stage 1 alone; writes the autoencoder, the latents and the custodian's `stage1.json`.

    In `private` mode stage 1 is calibrated to the whole `cfg.epsilon`; `tdpdm diffuse` then
    needs a larger target for the two stages together."""
    ctx = _Context.start(cfg, log, telemetry)
    _require_backend(cfg)
    records = training_set(cfg, ctx.data_dir)
    n = records.n_records()
    plan = plan_run(cfg, n, ctx.budget.adjacency, ctx.budget.delta, encoder_only=True)
    session = ctx.begin(plan.events())
    stages: list[dict[str, Any]] = []
    with _charged(ctx, session, lambda: records.reads > 0), _ray_for(cfg):
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
        ctx.layout.manifest, json.dumps(manifest, indent=2).encode(), private=True
    )
    _remove_work(ctx)
    return manifest


def run_diffuse_stage(
    cfg: RunConfig, from_dir: str, log: Log = print, telemetry: Telemetry | None = None
) -> RunResult:
    """Stage 2 on the output of `run_encode_stage`, then sampling and the report.

    Private latents are sensitive: in `private` mode reading them is charged (DP-SGD calibrated
    so that stage 1 and stage 2 together meet `cfg.epsilon`)."""
    source = RunLayout(from_dir)
    manifest = _read_manifest(source.manifest)
    for key in ("dataset", "mode"):
        if manifest[key] != getattr(cfg, key):
            raise ValueError(
                f"{from_dir} was encoded for {key} {manifest[key]!r}, not {getattr(cfg, key)!r}"
            )
    stage1 = cfg.stage1.replace(
        latent_dim=manifest["latent_dim"],
        width=manifest["width"],
        mechanism=manifest.get("mechanism", "dpsgd-autoencoder"),
        vae_hidden=manifest.get("vae_hidden", cfg.stage1.vae_hidden),
    )
    cfg = cfg.replace(stage1=stage1)  # a checked copy: the caller's config is untouched
    ctx = _Context.start(cfg, log, telemetry)
    stage1_events = [event_from_dict(e) for e in manifest["events"]]
    n = int(manifest["n_records"])
    if stage1.mechanism == "lipschitz-vae":
        from tdpdm.stages.lipschitz_release import new_lipschitz_vae

        autoencoder = new_lipschitz_vae(cfg)
    else:
        autoencoder = ConvAutoencoder(stage1.latent_dim, stage1.width)
    load_model_state(source.autoencoder, autoencoder)
    latents_uri = source.latents(cfg.mode)
    stages: list[dict[str, Any]] = []
    session: PrivacySession | None = None
    if cfg.mode == "private" and cfg.tune.trials:
        # Each trial reserves its own charge and reads the private latents under it.
        denoiser = _tuned_stage2(ctx, latents_uri, stage1_events, n, stages)
        events = stage1_events
    elif cfg.mode == "private":
        plan2 = plan_diffusion(cfg, n, ctx.budget.adjacency, ctx.budget.delta, stage1_events)
        session = ctx.begin([plan2.event()])
        read = [False]
        with _charged(ctx, session, lambda: read[0]):
            if not session.grant.is_active():
                raise PermissionError("private latents need an open ledger charge")
            read[0] = True  # before the first byte: a failure from here on is charged
            latents, labels, _ = read_latents(latents_uri, ctx.spec.num_classes)
            denoiser = _stage2(ctx, plan2, session, latents, labels, stages)
        events = [*stage1_events, *session.recorded]
    else:  # a DP release: post-processing
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
        events = stage1_events
    # The decoder the synthetic images are made with is part of the release.
    save_model(autoencoder, ctx.layout.autoencoder)
    return _publish(ctx, autoencoder, denoiser, events, session, n, {"from": from_dir}, stages)


def _publish(
    ctx: _Context,
    autoencoder: torch.nn.Module,
    denoiser: torch.nn.Module,
    events: list,
    session: PrivacySession | None,
    n: int,
    latents_info: dict[str, Any],
    stages: list[dict[str, Any]],
) -> RunResult:
    """Post-processing of the DP models (sample, decode, write the release), then the
    custodian's evaluation; the release report carries nothing read from real data."""
    cfg, spec, layout = ctx.cfg, ctx.spec, ctx.layout
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
    write_synthetic(
        layout.synthetic,
        images,
        labels,
        class_names=list(spec.class_names),
        guarantee=words.parquet_guarantee(privacy, ctx.job_id, cfg.dataset),
    )
    grid = grid_png_bytes(
        images,
        labels,
        per_class=10,
        num_classes=spec.num_classes,
        class_names=list(spec.class_names),
    )
    storage.write_bytes_atomic(layout.release(artifacts.SAMPLES_PNG), grid)
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
        "metrics": dict(EMPTY_METRICS),
        "metrics_note": RELEASE_METRICS_NOTE,
        "config": cfg.as_dict(),
        "stages": [dict(s) for s in stages],
        "latents": latents_info,
        "artifacts": artifacts.release_listing(cfg.mode)
        | {"custodian": artifacts.custodian_listing(cfg.mode)},
    }
    if ctx.tuning is not None:
        report["tuning"] = ctx.tuning
    _write_report(layout.release, report, grid, figures={}, private=False)

    metrics = _evaluate(cfg, images, labels, ctx.data_dir, stages, ctx.log)
    custodian = report | {
        "metrics": metrics,
        "metrics_note": METRICS_NOTE,
        "stages": stages,
        "wall_time_s": time.perf_counter() - ctx.started,
        "part": "custodian: never publish (values read from the private data without noise)",
    }
    if cfg.custodian_losses:
        custodian["training_losses"] = dict(ctx.losses)
    if cfg.evaluation.enabled:
        storage.write_bytes_atomic(
            layout.custodian(artifacts.EVALUATION_JSON),
            json.dumps(metrics, indent=2, sort_keys=True).encode(),
            private=True,
        )
    _write_report(
        layout.custodian, custodian, grid, figures=_trade_off_figure(custodian), private=True
    )
    _remove_work(ctx)
    ctx.telemetry.job(ctx.job_id, "succeeded")
    return RunResult(cfg.out, custodian)


def _write_report(
    where: Callable[..., str],
    report: dict[str, Any],
    grid: bytes,
    figures: dict[str, bytes],
    *,
    private: bool,
) -> None:
    """Validate first, then write report.json and report.html under `where(...)`."""
    validate_report(report)
    storage.write_bytes_atomic(
        where(artifacts.REPORT_JSON), report_to_json(report).encode(), private=private
    )
    html = render_report_html(report, grid_png=grid, extra_images=figures)
    storage.write_bytes_atomic(where(artifacts.REPORT_HTML), html.encode(), private=private)


def _remove_work(ctx: _Context) -> None:
    """Delete checkpoints that hold secret generator state once the run has succeeded."""
    for uri in [ctx.layout.work, *ctx.work_dirs]:
        storage.remove_tree(uri)


def _trade_off_figure(report: dict[str, Any]) -> dict[str, bytes]:
    """The privacy-utility plot of the benchmark rows for this data set, this run starred
    (custodian report only: the star is placed by a metric read from real data)."""
    import os

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


def _progress(ctx: _Context, stage: str, total: int, batch: int):
    """Telemetry every 10 steps: steps and throughput; the loss only if the custodian opted in
    (a batch's mean loss is an unnoised statistic of private records)."""
    last = [time.perf_counter(), 0]
    keep_loss = ctx.cfg.custodian_losses

    def on_step(step: int, loss: float) -> None:
        if keep_loss and np.isfinite(loss):
            ctx.losses[stage] = float(loss)
        if step % 10 and step != total:
            return
        now = time.perf_counter()
        rate = (step - last[1]) * batch / max(now - last[0], 1e-9)
        shown = float(loss) if keep_loss and np.isfinite(loss) else None
        ctx.telemetry.step(stage, step - last[1], shown, rate)
        ctx.telemetry.stage(ctx.job_id, stage, step / total)
        last[:] = [now, step]

    return on_step


def _stage1(
    ctx: _Context,
    plan: PrivacyPlan,
    session: PrivacySession,
    records: PrivateTrainingSet,
    stages: list[dict[str, Any]],
):
    """Read the private records under the charge; train the stage-1 model with DP-SGD; produce
    latents (a DP release in `released` mode or with the Lipschitz VAE, a sensitive
    intermediate in `private` mode)."""
    cfg = ctx.cfg
    lipschitz = cfg.stage1.mechanism == "lipschitz-vae"
    if lipschitz:
        from tdpdm.stages import lipschitz_release as lr

        noise_std = lr.training_noise_std(cfg, plan.release_event())
        factory = functools.partial(
            lr.make_vae, cfg.stage1.latent_dim, cfg.stage1.vae_hidden, noise_std
        )
        loss_fn, what = lr.vae_loss, "Lipschitz VAE"
    else:
        factory = functools.partial(new_autoencoder, cfg.stage1, cfg.seed)
        loss_fn, what = reconstruction_loss, "autoencoder"
    images, labels = records.open(session.grant)
    t = time.perf_counter()
    ctx.log(
        f"stage 1: {what} (DP-SGD), {plan.encoder.steps} steps, "
        f"sigma {plan.encoder.noise_multiplier:.3f}, q {plan.encoder.sampling_rate:.4f}"
    )
    key = MechanismKey.fresh("stage1-dpsgd")
    tensors = [images_to_tensor(images)]
    if cfg.distributed.backend == "ray":
        model, execution = _dpsgd_on_ray(
            ctx, "encoder", factory, tensors, loss_fn, plan, session, key
        )
    else:
        torch.manual_seed(cfg.seed)  # public initial weights
        model = factory()
        train_dpsgd(
            model,
            tensors,
            loss_fn,
            plan.encoder,
            session,
            lr=cfg.stage1.lr,
            key=key,
            device=cfg.device,
            on_step=_progress(ctx, "encoder", plan.encoder.steps, plan.encoder.expected_batch_size),
            progress=cfg.progress,
            grad_sample_mode=cfg.stage1.grad_sample_mode,
        )
        execution = {"backend": "local", "num_workers": 1}
    del tensors
    if lipschitz:
        model.project_weights()
    stages.append(
        {
            "name": "encoder",
            "wall_time_s": time.perf_counter() - t,
            "details": {"steps": plan.encoder.steps, "mechanism": cfg.stage1.mechanism} | execution,
        }
    )
    t = time.perf_counter()
    label_vectors = None
    if lipschitz:
        released_vae = lr.release(
            model,
            images,
            labels,
            num_classes=ctx.spec.num_classes,
            label_scale=cfg.release.label_scale,
            event=plan.release_event(),
            session=session,
            seed=cfg.seed,
            key=MechanismKey.fresh("lipschitz-release"),
        )
        ctx.log(
            f"Lipschitz release: L = {released_vae.lipschitz_bound:.6f} (numerical check on data: "
            f"passed), sensitivity {released_vae.sensitivity:.3f}, "
            f"noise std {released_vae.noise_std:.3f}"
        )
        latents, labels = released_vae.latents, released_vae.labels
        label_vectors, info = released_vae.label_vectors, released_vae.info()
    else:
        latents = encode(model, images, cfg.device)
        if cfg.mode == "released":
            released = release_latents(
                latents,
                labels,
                num_classes=ctx.spec.num_classes,
                cfg=cfg.release,
                event=plan.release_event(),
                session=session,
                key=MechanismKey.fresh("release"),
            )
            latents, labels = released.latents, released.labels
            label_vectors = released.label_vectors
            info = {"kind": "dp_release", **released.metadata()}
        else:
            info = {"kind": "sensitive_intermediate"}
    del images
    save_model(model, ctx.layout.autoencoder)
    if info["kind"] == "dp_release":
        meta = info | {"sensitive": False, "guarantee": _release_guarantee(plan, session)}
    else:
        meta = info | {
            "sensitive": True,
            "warning": "private latents: custodian-only, never publish",
        }
    write_latents(
        ctx.layout.latents(cfg.mode),
        latents,
        labels,
        meta,
        # row order: a secret shuffle (a public one would tie rows back to file positions)
        seed=MechanismKey.fresh("latents-order").numpy(),
        label_vectors=label_vectors,
        private=info["kind"] != "dp_release",
    )
    stages.append(
        {
            "name": "latents",
            "wall_time_s": time.perf_counter() - t,
            "details": {"mode": cfg.mode, "dim": int(latents.shape[1])},
        }
    )
    return model, latents, labels, info


def _dpsgd_on_ray(
    ctx: _Context,
    stage: str,
    factory: Callable[[], torch.nn.Module],
    tensors: list[torch.Tensor],
    loss_fn: Callable,
    plan: PrivacyPlan,
    session: PrivacySession,
    key: MechanismKey,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Stage 1's DP-SGD on a Ray Train worker group (a local Ray unless an address is set).

    The records, opened under this job's charge, go to Ray's object store for the workers;
    the steps of the final checkpoint are charged on `session` (see `distributed.stage1_train`).
    Checkpoints (secret generator state) go to the custodian's work area and are deleted when
    the run succeeds."""
    from tdpdm.distributed.stage1_train import train_dpsgd_on_ray

    cfg = ctx.cfg
    d = cfg.distributed
    if cfg.device.startswith("cuda") and not d.use_gpu:
        ctx.log("note: device is cuda but distributed.use_gpu is false: Ray workers use CPUs")
    torch.manual_seed(cfg.seed)  # public initial weights, the same on every worker
    outcome = train_dpsgd_on_ray(
        factory,
        tensors,
        loss_fn,
        plan.encoder,
        session,
        cfg=d,
        storage_path=d.storage_path or storage.join(ctx.layout.work, "ray"),
        lr=cfg.stage1.lr,
        key=key,
        grad_sample_mode=cfg.stage1.grad_sample_mode,
        progress=cfg.progress,
        # Unique: Ray Train resumes a run whose name it finds in storage, and a new charge must
        # never continue another job's checkpoint.
        run_name=f"{ctx.job_id}-stage1-{uuid.uuid4().hex[:6]}",
    )
    ctx.work_dirs.append(outcome.run_dir)
    ctx.telemetry.step(stage, outcome.steps, None, outcome.samples_per_second)
    ctx.telemetry.stage(ctx.job_id, stage, 1.0)
    return outcome.model, outcome.as_details()


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
    """Train the stage-2 model, or with `tune.trials` search for it (`_tuned_stage2`).

    `n_records`: the planned (public) record count; with a Poisson subset the realised number
    of latents differs and must not steer planning."""
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
        save_model(model, ctx.layout.diffusion)
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
        key=MechanismKey.fresh("stage2-dpsgd") if plan else None,
        progress=cfg.progress,
        on_step=_progress(ctx, "diffusion", max(steps, 1), cfg.stage2.batch_size),
    )
    stages.append(
        {
            "name": "diffusion",
            "wall_time_s": time.perf_counter() - t,
            "details": {"dp_sgd": plan is not None, "steps": steps},
        }
    )
    save_model(denoiser, ctx.layout.diffusion)
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
        work_dir=ctx.layout.work,
    )
    ctx.tuning, ctx.tuning_events = outcome.section, outcome.events
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
    save_model(outcome.denoiser, ctx.layout.diffusion)
    return outcome.denoiser


_MANIFEST_FIELDS = {
    "dataset": str,
    "mode": str,
    "n_records": int,
    "latent_dim": int,
    "width": int,
    "events": list,
}


def _read_manifest(uri: str) -> dict[str, Any]:
    """`stage1.json` of an encode run, checked: a damaged one fails in one line naming it."""
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


def _release_guarantee(plan: PrivacyPlan, session: PrivacySession) -> dict[str, Any]:
    bound = compute_epsilon(session.recorded, plan.delta, plan.adjacency)
    return bound.as_dict() | {"events": [event_to_dict(e) for e in session.recorded]}


def _privacy_section(ctx: _Context, events, session, bound, n: int) -> dict[str, Any]:
    cfg, ledger, budget = ctx.cfg, ctx.ledger, ctx.budget
    adjacency = Adjacency(bound.adjacency)
    covered = words.covered_outputs(cfg.mode, cfg.stage1.mechanism)
    spent = ledger.spent(cfg.dataset)
    return {
        "epsilon": bound.epsilon,
        "delta": bound.delta,
        "adjacency": bound.adjacency.value,
        "adjacency_words": adjacency.in_words(),
        "accountant": bound.accountant,
        "target_epsilon": cfg.epsilon,
        "events": [event_to_dict(e) for e in events],
        "budget": budget.as_dict() | {"spent_epsilon_after_run": spent.epsilon},
        "charge_id": session.charge.charge_id if session else None,
        "ledger": storage.redact(cfg.ledger),
        "statement": words.statement(
            bound,
            n=n,
            dataset=cfg.dataset,
            covered=covered,
            adjacency_words=adjacency.in_words(),
        ),
        "randomness": words.RANDOMNESS,
        "not_covered": words.not_covered(
            cfg.mode,
            evaluated=cfg.evaluation.enabled,
            custodian_losses=cfg.custodian_losses,
            subset=cfg.subset,
        ),
    }


def _evaluate(cfg: RunConfig, images, labels, data_dir, stages, log) -> dict[str, Any]:
    """Custodian-only metrics (opt-in): they read the real train/test splits without noise."""
    if not cfg.evaluation.enabled:
        return dict(EMPTY_METRICS)
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
