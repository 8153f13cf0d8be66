"""The one place where DP-SGD runs, and where its steps are charged to the ledger.

Opacus provides the pieces (per-sample gradients, clipping and noise; Poisson sampling is
`PoissonBatches` here, see why there); this module assembles them explicitly instead of calling
`make_private`, so that the sampling rate is
*exactly* the one the plan was accounted with (Opacus issue 813: a loader whose length changes
silently changes the rate) and the step count is exactly the plan's. Whatever happens, the steps
that ran are recorded on the session's ledger charge.

The same loop runs data-parallel (`distributed=True`, one process per rank of an initialised
`torch.distributed` group, as Ray Train sets up): records are split once among the ranks and
each rank Poisson-samples its share at the plan's rate, so the union is exactly one Poisson
batch at that rate over all records; the logical batch is global. Opacus's distributed optimizer
adds the noise on rank 0 only, and the per-rank expected batch is the global one over the world
size, so the all-reduced update is (clipped global sum + N(0, (sigma C)^2)) / global expected
batch: the single-process mechanism. `TrainingState` snapshots (model, optimizer, step, every
rank's sampling, noise and loss generator) let a restarted run continue at the exact step.

Randomness. The Poisson masks, the Gaussian noise and the per-record loss randomness (diffusion
timesteps, VAE sampling noise, dropout) come from the segment's secret `MechanismKey`, one child
per rank and purpose, never from the public `--seed` (see `tdpdm.privacy.randomness`). A
`TrainingState` therefore holds secret generator states: it is custodian-private, never released.
The loss is not shown on the progress bar: a batch's mean loss is an unnoised statistic of
private records (the `on_step` callback still receives it, in-process, for an opt-in custodian
log).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import (
    DistributedDPOptimizer,
    DistributedDPOptimizerFastGradientClipping,
    DPOptimizer,
    DPOptimizerFastGradientClipping,
)
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from tqdm.auto import tqdm

from tdpdm.privacy.events import Event
from tdpdm.privacy.randomness import MechanismKey, uniform_shards
from tdpdm.stages.dpsgd_plan import DPSGDPlan


class DPSGDError(RuntimeError):
    """DP-SGD could not run as planned (sampling rate drift, non-finite loss, ...)."""


# Opacus's per-sample hooks on the first layer fire although inputs need no gradient; harmless.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]
"""`loss_fn(model, batch)` -> per-record losses, shape (B,)."""
GRAD_SAMPLE_MODES = ("ghost", "hooks")
"""`hooks` materialises every per-sample gradient (B x params); `ghost` (Opacus's ghost
clipping) computes per-sample gradient *norms* from activations and backprops and runs a second,
reweighted backward pass instead: the same clipped-sum-plus-noise, far less memory traffic."""
StepCallback = Callable[[int, float], None]


class StepRecorder(Protocol):
    """Where the steps that ran are charged: a `PrivacySession` on the process holding the
    ledger charge; a plain tally on a distributed worker (its driver charges)."""

    def record(self, event: Event) -> None: ...


@dataclass
class TrainingState:
    """Everything a restarted DP-SGD run needs to continue at step `step` as if never stopped.

    The generator states matter for privacy, not only for reproducibility: a restart that
    re-seeded would redraw the noise of step 1 at step `step + 1`, i.e. reuse noise. They are
    as secret as the mechanism key: a snapshot is custodian-private and never published."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    sampler_rng: list[torch.Tensor]
    """One per rank, in rank order."""
    noise_rng: list[torch.Tensor]
    loss_rng: list[torch.Tensor]
    """The global torch generator's state on each rank (per-record loss randomness)."""

    @property
    def world_size(self) -> int:
        return len(self.sampler_rng)


CheckpointCallback = Callable[[int, TrainingState | None, float], None]
"""`on_checkpoint(step, state, loss)`: called on *every* rank (collectives run inside); `state`
is the gathered snapshot on rank 0 and None elsewhere."""


class PoissonBatches:
    """Poisson sampling at `rate`, one batch per step, empty batches included.

    Used instead of Opacus's `DPDataLoader` because its distributed sampler silently skips a
    rank's empty local batch (the ranks then fall out of step and the batch is no longer a
    Poisson draw), and because a checkpoint needs the generator state at step granularity. With
    several ranks, each record is assigned to a rank by its own independent draw (never by a
    permutation of positions, which would tie a record's shard to the others); every record is
    still included independently with probability `rate`. All draws come from the secret
    `key`."""

    def __init__(
        self, n_records: int, rate: float, *, key: MechanismKey, rank: int = 0, world: int = 1
    ):
        self.rate = rate
        if world == 1:
            self.indices = torch.arange(n_records)
        else:
            shard = uniform_shards(key.child("shards"), n_records, world)
            self.indices = torch.from_numpy(np.flatnonzero(shard == rank))
        self.generator = key.child("sampler", rank).torch()

    def next_batch(self) -> torch.Tensor:
        """Positions (into the full record set) of the next batch."""
        mask = torch.rand(len(self.indices), generator=self.generator) < self.rate
        return self.indices[mask]


class _ForwardingDPDDP(DPDDP):
    """Opacus's DPDDP (weights broadcast from rank 0), but `model.encode(...)` etc. still reach
    the wrapped model, so a loss function works the same with and without it."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet (construction, unpickling)
                raise
            return getattr(self.module, name)


def train_dpsgd(
    model: nn.Module,
    tensors: Sequence[torch.Tensor],
    loss_fn: LossFn,
    plan: DPSGDPlan,
    session: StepRecorder,
    *,
    lr: float,
    key: MechanismKey,
    device: str,
    weight_decay: float = 0.0,
    on_step: StepCallback | None = None,
    progress: bool = True,
    grad_sample_mode: str = "hooks",
    make_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    distributed: bool = False,
    resume: TrainingState | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: CheckpointCallback | None = None,
    physical_batch_size: int | None = None,
) -> nn.Module:
    """Train `model` in place with DP-SGD for exactly `plan.steps` Poisson-sampled steps.

    `loss_fn(model, batch)` returns per-record losses (B,). The steps that ran in this call are
    recorded on `session` even if training fails part way. `key` is the segment's secret
    mechanism key (masks, noise and the loss's own randomness; see the module docstring); the
    sampling rate is the plan's, whatever the number of records handed in (a Poisson subset or
    held-out split has a random size, the rate stays public and fixed). `make_optimizer(params, lr=,
    weight_decay=)` defaults to Adam. `distributed`: this process is one rank of an initialised
    `torch.distributed` group and `tensors` are all records (each rank samples its share).
    `resume` continues from a snapshot; `on_checkpoint` gets one every `checkpoint_every` steps
    and after the last step. `physical_batch_size` bounds the records of one forward/backward
    pass (memory): a larger Poisson batch is processed in chunks whose clipped per-record
    gradients are summed before the step's one noise draw (Opacus's virtual steps), so the
    mechanism, and its accounting, are those of the whole batch.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise DPSGDError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}")
    if physical_batch_size is not None and physical_batch_size < 1:
        raise DPSGDError(f"physical_batch_size must be positive, not {physical_batch_size}")
    n = len(tensors[0])
    if not 0.0 < plan.sampling_rate <= 1.0:
        raise DPSGDError(f"{plan.stage}: sampling rate {plan.sampling_rate:.6g} not in (0, 1]")
    rank, world = _rank_and_world(distributed)
    keep_freed_memory()
    if resume is not None:
        if resume.world_size != world:
            raise DPSGDError(
                f"{plan.stage}: checkpoint was taken with {resume.world_size} workers, not {world}"
            )
        model.load_state_dict(resume.model)
    model.to(device).train()
    wrapped: nn.Module = _ForwardingDPDDP(model) if distributed else model
    ghost = grad_sample_mode == "ghost"
    if ghost:
        gs_model = GradSampleModuleFastGradientClipping(
            wrapped,
            batch_first=True,
            loss_reduction="mean",
            max_grad_norm=plan.max_grad_norm,
            use_ghost_clipping=True,
        )
    else:
        gs_model = GradSampleModule(wrapped, batch_first=True, loss_reduction="mean")
    if not isinstance(key, MechanismKey):
        raise DPSGDError(f"{plan.stage}: DP-SGD needs a secret MechanismKey, not {type(key)}")
    sampler = PoissonBatches(n, plan.sampling_rate, key=key, rank=rank, world=world)
    noise_generator = key.child("noise", rank).torch(device)
    loss_generator = key.child("loss", rank).torch()
    optimizer_cls = {
        (False, False): DPOptimizer,
        (True, False): DPOptimizerFastGradientClipping,
        (False, True): DistributedDPOptimizer,
        (True, True): DistributedDPOptimizerFastGradientClipping,
    }[ghost, distributed]
    optimizer = optimizer_cls(
        (make_optimizer or torch.optim.Adam)(
            gs_model.parameters(), lr=lr, weight_decay=weight_decay
        ),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        # Per rank, as Opacus's privacy engine does: rank 0's noise over (B / world) summed
        # over ranks and divided by world is the noise over the global B.
        expected_batch_size=plan.expected_batch_size / world,
        loss_reduction="mean",
        generator=noise_generator,
    )
    start = 0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        sampler.generator.set_state(resume.sampler_rng[rank])
        noise_generator.set_state(resume.noise_rng[rank])
        loss_generator.set_state(resume.loss_rng[rank])
        start = resume.step

    done = start
    bar = tqdm(
        total=plan.steps,
        initial=start,
        desc=f"{plan.stage} (DP-SGD)",
        disable=not progress or rank != 0,
        unit="step",
    )
    # The loss's own randomness (torch's global generators) runs on the secret loss stream for
    # the whole loop; the caller's global generators are restored afterwards.
    on_cuda = str(device).startswith("cuda")
    with torch.random.fork_rng(devices=[torch.device(device)] if on_cuda else []):
        torch.default_generator.set_state(loss_generator.get_state())
        if on_cuda:  # not restored on resume: a resumed GPU run redraws loss randomness
            cuda_seed = key.child("loss-cuda", rank, start).torch().initial_seed()
            torch.cuda.manual_seed(cuda_seed)
        try:
            while done < plan.steps:
                positions = sampler.next_batch()
                optimizer.zero_grad(set_to_none=True)
                if len(positions) == 0:
                    _noise_only_step(gs_model, ghost)
                    loss_value = float("nan")
                else:
                    loss_value = _clip_and_sum(
                        gs_model,
                        optimizer,
                        tensors,
                        positions,
                        loss_fn,
                        plan.stage,
                        device=device,
                        ghost=ghost,
                        physical_batch_size=physical_batch_size,
                    )
                optimizer.step()  # the step's one noise draw and update
                done += 1
                bar.update(1)
                if on_step is not None:
                    on_step(done, loss_value)
                if on_checkpoint is not None and (
                    done == plan.steps or (checkpoint_every and done % checkpoint_every == 0)
                ):
                    state = _snapshot(model, optimizer, sampler, noise_generator, done, distributed)
                    on_checkpoint(done, state, loss_value)
        finally:
            bar.close()
            if done > start:
                session.record(plan.event(steps=done - start))
            gs_model._close()
    model.eval()
    return model


def _clip_and_sum(
    gs_model: nn.Module,
    optimizer: DPOptimizer,
    tensors: Sequence[torch.Tensor],
    positions: torch.Tensor,
    loss_fn: LossFn,
    stage: str,
    *,
    device: str,
    ghost: bool,
    physical_batch_size: int | None,
) -> float:
    """Backward passes over the Poisson batch at `positions`, at most `physical_batch_size`
    records each; every chunk but the last is clipped and added to the optimizer's running sum
    by a skipped step (no noise, no update), so the caller's `step()` noises the whole batch's
    clipped sum once. Returns the batch's mean loss (for the in-process `on_step` only)."""
    size = physical_batch_size or len(positions)
    chunks = torch.split(positions, size)
    loss_sum = 0.0
    for i, chunk in enumerate(chunks):
        if i > 0:
            optimizer.zero_grad(set_to_none=True)  # keeps the running sum of a skipped step
        losses = loss_fn(gs_model, [t[chunk].to(device) for t in tensors])
        chunk_loss = float(losses.detach().sum())
        if not math.isfinite(chunk_loss):
            # no value, no position: only that training diverged
            raise DPSGDError(f"{stage}: the loss became non-finite")
        loss_sum += chunk_loss
        if ghost:
            DPTensorFastGradientClipping(gs_model, optimizer, losses, "mean").backward()
        else:
            losses.mean().backward()
        if i < len(chunks) - 1:
            optimizer.signal_skip_step(do_skip=True)
            optimizer.step()  # clip and accumulate only
    return loss_sum / len(positions)


def _rank_and_world(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 0, 1
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise DPSGDError("distributed DP-SGD needs an initialised torch.distributed group")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _snapshot(
    model: nn.Module,
    optimizer: DPOptimizer,
    sampler: PoissonBatches,
    noise_generator: torch.Generator,
    step: int,
    distributed: bool,
) -> TrainingState | None:
    """Rank 0 gathers every rank's generator states (a collective: all ranks call this)."""
    rngs = (
        sampler.generator.get_state(),
        noise_generator.get_state(),
        torch.default_generator.get_state(),
    )
    if distributed:
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, rngs)
        if torch.distributed.get_rank() != 0:
            return None
    else:
        gathered = [rngs]
    return TrainingState(
        step=step,
        model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        optimizer=_to_cpu(optimizer.state_dict()),
        sampler_rng=[g[0] for g in gathered],
        noise_rng=[g[1] for g in gathered],
        loss_rng=[g[2] for g in gathered],
    )


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc from returning per-sample-gradient buffers to the OS after every step.

    Each DP-SGD step allocates and frees (B x parameters) gradient buffers of 100s of MB; by
    default glibc maps and unmaps them each time, and the page faults cost as much CPU as the
    arithmetic (measured: sys time equal to user time, 0.57 s -> 0.35 s per stage-2 step with
    this). Memory stays at its peak instead. Off with TDPDM_NO_MALLOC_TUNING=1.
    """
    if os.environ.get("TDPDM_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


def _noise_only_step(gs_model: nn.Module, ghost: bool) -> None:
    """An empty Poisson batch still takes a step: a zero gradient from a phantom record (norm 0,
    so clipping leaves it 0) lets the optimizer add exactly the calibrated noise."""
    for p in gs_model.parameters():
        if p.requires_grad:
            if ghost:
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((1, *p.shape), device=p.device, dtype=p.dtype)
    if ghost:
        gs_model.per_sample_gradient_norms = torch.zeros(1)
