"""Where a run's work executes: stage 1's DP-SGD in this process or on a Ray Train worker
group, and one Ray (local, or a cluster's) for the whole job when the backend is Ray. The
pipeline (`tdpdm/pipeline.py`) wires these in; Ray itself is imported only when used.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import torch

from tdpdm.config import RunConfig
from tdpdm.data import storage
from tdpdm.stages.stage1_mechanisms import Trainer, train_locally


def trainer(cfg: RunConfig) -> Trainer:
    """Where stage 1's DP-SGD runs: in this process, or on a Ray Train worker group."""
    return train_on_ray if cfg.distributed.backend == "ray" else train_locally


def train_on_ray(ctx, factory, tensors, loss_fn, plan, session, key):
    """The `Trainer` on Ray Train (a local Ray unless an address is set). The records, opened
    under this job's charge, go to Ray's object store; the steps of the final checkpoint are
    charged on `session`. Checkpoints (secret generator state) go to the custodian's work area
    and are deleted when the run succeeds."""
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
        plan,
        session,
        cfg=d,
        storage_path=d.storage_path or storage.join(ctx.layout.work, "ray"),
        lr=cfg.stage1.lr,
        key=key,
        grad_sample_mode=cfg.stage1.grad_sample_mode,
        physical_batch_size=cfg.stage1.physical_batch_size,
        progress=cfg.progress,
        # Unique: Ray Train resumes a run whose name it finds in storage, and a new charge must
        # never continue another job's checkpoint.
        run_name=f"{ctx.job_id}-stage1-{uuid.uuid4().hex[:6]}",
    )
    ctx.work_dirs.append(outcome.run_dir)
    ctx.telemetry.step("encoder", outcome.steps, None, outcome.samples_per_second)
    ctx.telemetry.stage(ctx.job_id, "encoder", 1.0)
    return outcome.model, outcome.as_details()


def require_backend(cfg: RunConfig) -> None:
    """Refuse a Ray run where Ray is missing before planning or reserving anything."""
    if cfg.distributed.backend == "ray":
        from tdpdm.distributed.ray_runtime import import_ray

        import_ray()


def ray_for(cfg: RunConfig) -> contextlib.AbstractContextManager[Any]:
    """One Ray for the whole job (stage 1's Train workers, stage 2's Tune trials) when the
    backend is Ray: the embedded default starts a local one and stops it at the end."""
    if cfg.distributed.backend != "ray":
        return contextlib.nullcontext()
    from tdpdm.distributed.ray_runtime import ray_session

    return ray_session(cfg.distributed.address)


def stage2_sums(cfg: RunConfig) -> contextlib.AbstractContextManager[Any]:
    """Where stage 2's sufficient statistics are summed: over `distributed.num_workers` Ray
    tasks when the backend is Ray (inside `ray_for`), else in this process. Either way the
    release's noise is drawn once, by the stage-2 model, on the driver."""
    if cfg.distributed.backend != "ray":
        return contextlib.nullcontext()
    from tdpdm.distributed.stage2_sums import ray_row_sums
    from tdpdm.stages.row_sums import summing_with

    return summing_with(ray_row_sums(cfg.distributed.num_workers))
