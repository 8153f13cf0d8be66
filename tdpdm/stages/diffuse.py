"""Stage 2, latent diffusion: train the class-conditional denoiser on latents.

`private` mode trains with DP-SGD (through `dpsgd.train_dpsgd`, which charges the ledger);
`released` mode trains on a DP release, which is post-processing and costs nothing. An EMA of
the weights is kept either way (a function of DP iterates, so free).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tdpdm.config import Stage2Config
from tdpdm.models.diffusion import LatentDenoiser, diffusion_loss
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages.dpsgd import StepCallback, train_dpsgd
from tdpdm.stages.dpsgd_plan import DPSGDPlan


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for mine, theirs in zip(self.model.parameters(), model.parameters(), strict=True):
            mine.lerp_(theirs.detach(), 1 - self.decay)


def train_diffusion(
    latents: np.ndarray,
    labels: np.ndarray,
    cfg: Stage2Config,
    *,
    num_classes: int,
    plan: DPSGDPlan | None,
    session: PrivacySession | None,
    device: str,
    seed: int,
    key: MechanismKey | None = None,
    progress: bool = True,
    on_step: StepCallback | None = None,
    on_ema: Callable[[int, nn.Module], None] | None = None,
    model: LatentDenoiser | None = None,
    loss: Callable[..., torch.Tensor] = diffusion_loss,
) -> LatentDenoiser:
    """DP-SGD when `plan` is given (private latents), plain Adam otherwise (released ones).

    `seed` sets the public initial weights (and, on a DP release, the batch order); `key` is
    the DP-SGD segment's secret randomness, required with `plan`. `on_ema(step, ema_model)` runs
    after every step (Tune scores the EMA model mid-run). `model` and `loss` replace the plain
    denoiser and its eps loss (the ambient denoiser of a release, `stages/ambient.py`)."""
    torch.manual_seed(seed)
    if model is None:
        model = LatentDenoiser(latents.shape[1], num_classes, cfg.hidden, cfg.depth)
    model = model.to(device)
    ema = EMA(model, cfg.ema_decay)
    x = torch.from_numpy(np.ascontiguousarray(latents)).float()
    y = torch.from_numpy(np.ascontiguousarray(labels)).long()

    def loss_fn(m: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return loss(m, batch[0], batch[1], cfg.noise_draws, cfg.label_dropout)

    def after_step(step: int, loss: float) -> None:
        ema.update(model)
        if on_step is not None:
            on_step(step, loss)
        if on_ema is not None:
            on_ema(step, ema.model)

    if plan is not None:
        if session is None or key is None:
            raise ValueError("DP-SGD training needs a privacy session and a mechanism key")
        train_dpsgd(
            model,
            [x, y],
            loss_fn,
            plan,
            session,
            lr=cfg.lr,
            key=key,
            device=device,
            on_step=after_step,
            progress=progress,
            grad_sample_mode=cfg.grad_sample_mode,
            physical_batch_size=cfg.physical_batch_size,
        )
    else:
        _train_plain(
            model,
            x,
            y,
            loss_fn,
            cfg,
            seed=seed,
            device=device,
            progress=progress,
            on_step=after_step,
        )
    return ema.model


def _train_plain(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    cfg: Stage2Config,
    *,
    seed: int,
    device: str,
    progress: bool,
    on_step: StepCallback,
) -> None:
    """Ordinary minibatch training: only for data that is already a DP release."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = len(x)
    batch = min(cfg.batch_size, n)
    steps = max(1, math.ceil(cfg.epochs * n / batch))
    model.train()
    done = 0
    with tqdm(
        total=steps, desc="diffusion (on DP release)", disable=not progress, unit="step"
    ) as bar:
        while done < steps:
            for idx in torch.randperm(n, generator=generator).split(batch):
                if done >= steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model, [x[idx].to(device), y[idx].to(device)]).mean()
                loss.backward()
                optimizer.step()
                done += 1
                bar.update(1)
                on_step(done, float(loss.detach()))
    model.eval()
