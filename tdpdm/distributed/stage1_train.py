"""Stage 1's DP-SGD on a Ray Train worker group, with checkpoints and recovery.

Each worker runs the one DP-SGD loop (`tdpdm.stages.dpsgd.train_dpsgd`, `distributed=True`):
`prepare_model(parallel_strategy=None)` only places the model, Opacus's DPDDP and distributed
optimizer do the rest (noise on rank 0, the logical batch global). The loop is generic: a model
factory, a per-record loss and tensors, so any stage-1 model plugs in.

Privacy. The driver holds the `PrivacySession`: the whole plan is reserved before any record is
read, the driver opens the records under the grant and puts them in Ray's object store, where
they stay (private data, in the cluster's shared memory and spill directory) until the job's
references go. Workers charge nothing themselves. After training (or after it failed) the driver
records the steps held by the latest checkpoint, i.e. the steps that produced the model it
returns, once.

Why steps lost after the last checkpoint (a killed worker) are not charged: the released model
is a function of the checkpoint and of the steps run after it only. Moreover a restart restores
every rank's sampling and noise generator from the checkpoint, so the redone steps draw the very
same Poisson batches and noise as the lost ones, from the same weights: they recompute the same
mechanism outputs rather than draw new ones, so even an observer of the lost steps learns
nothing beyond one run of each step. The epsilon of a recovered run therefore equals that of an
uninterrupted run of the same steps.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tdpdm.config import DistributedConfig
from tdpdm.data import storage
from tdpdm.distributed.ray_runtime import import_ray, ray_session
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dpsgd import (
    DPSGDError,
    DPSGDPlan,
    LossFn,
    StepRecorder,
    TrainingState,
    train_dpsgd,
)

STATE_FILE = "dpsgd_state.pt"


@dataclass
class RayTrainOutcome:
    model: nn.Module
    steps: int
    num_workers: int
    run_dir: str
    """Where Ray Train kept the checkpoints."""
    train_seconds: float
    """Rank 0's time in the DP-SGD loop of the last attempt (no start-up, no restarts)."""
    steps_last_attempt: int
    expected_batch_size: int

    @property
    def samples_per_second(self) -> float:
        return self.steps_last_attempt * self.expected_batch_size / max(self.train_seconds, 1e-9)

    def as_details(self) -> dict[str, Any]:
        return {
            "backend": "ray",
            "num_workers": self.num_workers,
            "steps": self.steps,
            "samples_per_s": round(self.samples_per_second, 1),
        }


class _Tally:
    """A worker's step recorder: the driver, not the worker, charges the ledger."""

    def record(self, event: Any) -> None:
        pass


def train_dpsgd_on_ray(
    model_factory: Callable[[], nn.Module],
    tensors: Sequence[torch.Tensor],
    loss_fn: LossFn,
    plan: DPSGDPlan,
    session: StepRecorder,
    *,
    cfg: DistributedConfig,
    storage_path: str,
    lr: float,
    key: MechanismKey,
    grad_sample_mode: str = "hooks",
    physical_batch_size: int | None = None,
    progress: bool = True,
    run_name: str | None = None,
) -> RayTrainOutcome:
    """Train `model_factory()` with DP-SGD on `cfg.num_workers` Ray Train workers.

    `model_factory` and `loss_fn` must be picklable (module-level functions or partials).
    `key` is the segment's secret mechanism key: it reaches the workers in memory (Ray's object
    store), and `storage_path` must be custodian-private, since checkpoints and Ray's own run
    state (which holds the loop's config) can reveal the noise. Returns the model of the final
    checkpoint; charges its steps on `session`."""
    ray = import_ray()
    from ray.train import CheckpointConfig, FailureConfig, Result, ScalingConfig
    from ray.train import RunConfig as RayRunConfig  # not tdpdm.config.RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_name = run_name or f"{plan.stage}-{uuid.uuid4().hex[:8]}"
    storage_path = _absolute(storage_path)
    run_dir = storage.join(storage_path, run_name)
    with ray_session(cfg.address):
        cpus = cpus_per_worker(cfg, ray.cluster_resources().get("CPU", 1))
        data_ref = ray.put([t.detach().cpu().numpy() for t in tensors])
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "data": data_ref,
                "model_factory": model_factory,
                "loss_fn": loss_fn,
                "plan": dataclasses.asdict(plan),
                "lr": lr,
                "key": key,
                "grad_sample_mode": grad_sample_mode,
                "physical_batch_size": physical_batch_size,
                "checkpoint_every": cfg.checkpoint_every,
                "progress": progress,
                "cpus": cpus,
            },
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cpus} | ({"GPU": 1} if cfg.use_gpu else {}),
            ),
            run_config=RayRunConfig(
                name=run_name,
                storage_path=storage_path,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        failure: Exception | None = None
        metrics: dict[str, Any] = {}
        try:
            result = trainer.fit()
            checkpoint, metrics = result.checkpoint, result.metrics or {}
        except Exception as err:  # Ray Train gave up: charge what the last checkpoint holds
            failure = err
            try:
                checkpoint = Result.from_path(run_dir).checkpoint
            except Exception:
                checkpoint = None
        finally:
            del data_ref
    state = _load_state(checkpoint) if checkpoint is not None else None
    charged = state.step if state is not None else 0
    if failure is not None and state is None and _may_hold_checkpoints(run_dir):
        charged = plan.steps  # unreadable checkpoints: the bound none of them exceeds
    if charged:
        session.record(plan.event(steps=charged))
    if failure is not None:
        raise DPSGDError(
            f"{plan.stage}: Ray Train failed after {cfg.max_failures} recoveries; "
            f"{charged} checkpointed steps charged ({type(failure).__name__}: "
            f"{str(failure).splitlines()[0] if str(failure) else ''})"
        ) from failure
    if state is None or state.step != plan.steps:
        raise DPSGDError(
            f"{plan.stage}: Ray Train ended without a final checkpoint at step {plan.steps}"
        )
    model = model_factory()
    model.load_state_dict(state.model)
    model.eval()
    return RayTrainOutcome(
        model,
        state.step,
        cfg.num_workers,
        run_dir,
        train_seconds=float(metrics.get("elapsed_s", float("nan"))),
        steps_last_attempt=int(metrics.get("steps_this_attempt", 0)),
        expected_batch_size=plan.expected_batch_size,
    )


def _may_hold_checkpoints(run_dir: str) -> bool:
    """False only when a local run directory certainly holds no checkpoint."""
    if "://" in run_dir:
        return True
    return os.path.isdir(run_dir) and any(
        name.startswith("checkpoint_") for name in os.listdir(run_dir)
    )


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _load_state(checkpoint: Any) -> TrainingState:
    with checkpoint.as_directory() as directory:
        raw = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
    return TrainingState(**raw)


def cpus_per_worker(cfg: DistributedConfig, ray_cpus: float) -> int:
    """CPUs each worker asks Ray for (and its torch threads): the configured number, else, on
    the embedded local Ray, its CPUs shared among the workers (one worker gets them all), else 1
    (a cluster's sizing is its operator's: ask for more with `distributed.cpus_per_worker`)."""
    if cfg.cpus_per_worker is not None:
        return cfg.cpus_per_worker
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        return 1
    return max(1, int(ray_cpus) // cfg.num_workers)


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: resume if there is a checkpoint, run DP-SGD, report checkpoints."""
    import ray
    import ray.train
    import ray.train.torch

    # Ray sets OMP_NUM_THREADS from the CPUs asked for; torch may already have read another.
    torch.set_num_threads(int(config.get("cpus", 1)))

    context = ray.train.get_context()
    rank = context.get_world_rank()
    checkpoint = ray.train.get_checkpoint()
    resume = _load_state(checkpoint) if checkpoint is not None else None
    with warnings.catch_warnings():  # object-store arrays are read-only; nothing writes them
        warnings.simplefilter("ignore", UserWarning)
        tensors = [torch.from_numpy(a) for a in ray.get(config["data"])]
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(config["model_factory"](), parallel_strategy=None)

    first_step = resume.step if resume is not None else 0
    started = time.perf_counter()

    def report(step: int, state: TrainingState | None, loss: float) -> None:
        # No loss: a batch's mean loss is an unnoised statistic of private records.
        metrics = {
            "step": step,
            "elapsed_s": time.perf_counter() - started,
            "steps_this_attempt": step - first_step,
        }
        if state is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(dataclasses.asdict(state), os.path.join(directory, STATE_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    train_dpsgd(
        model,
        tensors,
        config["loss_fn"],
        DPSGDPlan(**config["plan"]),
        _Tally(),
        lr=config["lr"],
        key=config["key"],
        device=str(device),
        progress=config["progress"] and rank == 0,
        grad_sample_mode=config["grad_sample_mode"],
        physical_batch_size=config.get("physical_batch_size"),
        distributed=True,
        resume=resume,
        checkpoint_every=config["checkpoint_every"],
        on_checkpoint=report,
    )
