"""A latent denoiser trained on *noisy* latents of known noise level (ambient diffusion).

A per-record release gives y = z + n, n ~ N(0, s^2 I) with s public. In the variance-preserving
schedule x_t = sqrt(a) z + sqrt(1 - a) e, the release already holds part of that noise: for any
a <= 1 / (1 + s^2), x_t = sqrt(a) y + sqrt(1 - a (1 + s^2)) e' has exactly x_t's law. So the
network learns from the release alone at every such level, predicting the *release* E[y | x_t]
(Daras et al., "Consistent diffusion meets Tweedie", 2024). Tweedie's formula turns that into
the clean prediction the sampler needs: both E[sqrt(a) z | x_t] and E[sqrt(a) y | x_t] are x_t
plus their own noise variance times the score, so

    eps_hat(x_t) = sqrt(1 - a) (x_t - sqrt(a) E[y | x_t]) / (1 - a (1 + s^2)).

The factor blows up as a approaches 1 / (1 + s^2): sampling stops at the level where it is
`1 / (1 - FLOOR_RATIO)` times its value at pure noise and returns the clean estimate there,
E[z | x_t]. What finer detail the release's noise hid below that level no estimator recovers;
this model draws what is left above it, where a plain denoiser on y would learn the noise too.

Latents are divided by a public `unit` (the release's overall std) so that the schedule sees
unit-variance data; `noise_var` is s^2 in those units.
"""

from __future__ import annotations

import torch

from tdpdm.models.diffusion import LatentDenoiser, alpha_bar, ddim_sample

FLOOR_RATIO = 0.5
"""Sampling stops where a s^2 / (1 - a) reaches this: the clean estimate's Tweedie factor is
then 1 / (1 - FLOOR_RATIO) = 2 (smaller ratios stop earlier, with blurrier latents)."""


def time_of_alpha(target: float, iterations: int = 60) -> float:
    """The t in [0, 1] at which `alpha_bar(t)` (decreasing) equals `target`, by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if float(alpha_bar(torch.tensor(mid))) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class AmbientDenoiser(LatentDenoiser):
    """The `LatentDenoiser` network, predicting the release E[y | x_t]; `forward` returns the
    clean eps prediction, so classifier-free guidance and DDIM work unchanged."""

    def __init__(
        self,
        latent_dim: int,
        num_classes: int = 10,
        hidden: int = 256,
        depth: int = 3,
        *,
        noise_var: float = 0.0,
        unit: float = 1.0,
    ) -> None:
        super().__init__(latent_dim, num_classes, hidden, depth)
        self.register_buffer("noise_var", torch.tensor(float(noise_var)))
        self.register_buffer("unit", torch.tensor(float(unit)))

    def release_time(self) -> float:
        """The level at which x_t is the scaled release itself: alpha = 1 / (1 + s^2)."""
        return time_of_alpha(1.0 / (1.0 + float(self.noise_var)))

    def floor_time(self) -> float:
        """Where sampling stops: a s^2 / (1 - a) = FLOOR_RATIO."""
        s2 = float(self.noise_var)
        return time_of_alpha(FLOOR_RATIO / (s2 + FLOOR_RATIO)) if s2 > 0 else 0.0

    def predict_release(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().forward(x, t, y)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = alpha_bar(t).unsqueeze(-1)
        spare = (1 - a * (1 + self.noise_var)).clamp_min(1e-4)  # the noise x_t adds to y
        return (1 - a).sqrt() * (x - a.sqrt() * self.predict_release(x, t, y)) / spare

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        *,
        steps: int,
        guidance: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Clean latents (n, d) on the release's scale, from pure noise down to the floor,
        clamped to the encoders' range [-1, 1] (as the mixtures' samples)."""
        z = ddim_sample(
            self, labels, steps=steps, guidance=guidance, generator=generator,
            t_end=self.floor_time(),
        )  # fmt: skip
        return (z * self.unit).clamp(-1.0, 1.0)


def ambient_loss(
    model: AmbientDenoiser,
    y_release: torch.Tensor,
    labels: torch.Tensor,
    noise_draws: int,
    label_dropout: float,
) -> torch.Tensor:
    """Each record's MSE of predicting its (unit-scaled) release from x_t, averaged over its
    draws of t in [release level, 1]; shape (B,)."""
    b, d = y_release.shape
    module = getattr(model, "_module", model)
    t_low = module.release_time()
    t = t_low + (1 - t_low) * torch.rand(b, noise_draws, device=y_release.device)
    a = alpha_bar(t).unsqueeze(-1)
    spare = (1 - a * (1 + module.noise_var)).clamp_min(0.0)
    e = torch.randn(b, noise_draws, d, device=y_release.device)
    target = y_release.unsqueeze(1)
    x_t = a.sqrt() * target + spare.sqrt() * e
    drop = torch.rand(b, device=y_release.device) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, module.num_classes), labels)
    pred = module.predict_release(x_t, t, labels)
    return ((pred - target) ** 2).mean(dim=(1, 2))
