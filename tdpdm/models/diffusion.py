"""The stage-2 class-conditional latent diffusion model: denoiser, schedule and sampler.

The denoiser is an MLP over latent vectors that accepts an extra "noise draws" axis,
inputs of shape (B, K, d): DP-SGD clips one gradient per *record*, and averaging the loss over
K noise levels per record before clipping (DPDM's noise multiplicity) lowers the gradient
variance for free. Opacus's per-sample hooks treat the extra axis as part of the sample.
Label `num_classes` is the "no label" token for classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal), clamped away from 0 and 1 for stability."""
    s = 0.008
    return (torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2).clamp(1e-4, 0.9999)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.act(self.norm(h) + cond))))


class LatentDenoiser(nn.Module):
    """Predicts the noise eps in x_t = sqrt(a) x_0 + sqrt(1 - a) eps, given t and a label."""

    def __init__(
        self, latent_dim: int, num_classes: int = 10, hidden: int = 256, depth: int = 3
    ) -> None:
        super().__init__()
        self.latent_dim, self.num_classes, self.hidden = latent_dim, num_classes, hidden
        self.inp = nn.Linear(latent_dim, hidden)
        self.time = nn.Linear(hidden, hidden)
        self.label = nn.Embedding(num_classes + 1, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (B, K, d); t: (B, K) in [0, 1]; y: (B,) labels (num_classes = unconditional)."""
        cond = self.time(timestep_features(t, self.hidden)) + self.label(y).unsqueeze(1)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(torch.nn.functional.silu(self.out_norm(h)))


def diffusion_loss(
    model: nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    noise_draws: int,
    label_dropout: float,
) -> torch.Tensor:
    """Each record's eps-prediction MSE averaged over its K draws, shape (B,)."""
    b = x0.shape[0]
    t = torch.rand(b, noise_draws, device=x0.device)
    a = alpha_bar(t).unsqueeze(-1)
    eps = torch.randn(b, noise_draws, x0.shape[-1], device=x0.device)
    xt = a.sqrt() * x0.unsqueeze(1) + (1 - a).sqrt() * eps
    num_classes = model.num_classes if hasattr(model, "num_classes") else model._module.num_classes
    drop = torch.rand(b, device=x0.device) < label_dropout
    y = torch.where(drop, torch.full_like(y, num_classes), y)
    pred = model(xt, t, y)
    return ((pred - eps) ** 2).mean(dim=(1, 2))


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    labels: torch.Tensor,
    *,
    steps: int = 50,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    t_end: float = 0.0,
) -> torch.Tensor:
    """Deterministic DDIM from pure noise to t_end, with classifier-free guidance weight
    `guidance` (0 = purely conditional). Returns (n, d) latents: at t_end > 0 (a model that
    knows nothing finer, `models/ambient.py`) the clean estimate at that level."""
    n, d, dev = labels.shape[0], model.latent_dim, labels.device
    x = torch.randn(n, 1, d, generator=generator, device=dev)
    null = torch.full_like(labels, model.num_classes)
    times = torch.linspace(1.0, t_end, steps + 1, device=dev)

    def clean(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the clean estimate x0, the guided eps) at level t."""
        tt = t.expand(n, 1)
        eps = model(x, tt, labels)
        if guidance:
            eps = (1 + guidance) * eps - guidance * model(x, tt, null)
        a = alpha_bar(t)
        return ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1.5, 1.5), eps

    for i in range(steps):
        t_next = times[i + 1]
        x0, eps = clean(x, times[i])
        a_next = alpha_bar(t_next) if t_next > 0 else torch.ones((), device=dev)
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    if t_end > 0:
        x = clean(x, times[-1])[0]
    return x.squeeze(1)
