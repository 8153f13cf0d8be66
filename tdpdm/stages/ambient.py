"""`released` mode's stage 2 as ambient diffusion: a denoiser trained on the release itself,
using the release's known noise level (`stage2.released_model: ambient-diffusion`, issue 14).

Two steps, both reading only the published release (post-processing, no privacy cost):
1. each row's class: the deconvolved mixture (`deconvolve.py`) is fitted first and every row's
   label drawn from its class posterior given the noisy latent *and* the noisy label part, so
   the labels the denoiser is conditioned on are inferred jointly with the latents rather than
   taken from the noisy label's arg-max (at epsilon 1 mostly wrong);
2. the `AmbientDenoiser` (`models/ambient.py`) learns E[release | x_t] at every noise level the
   release already exceeds, and samples clean latents down to the level its noise allows.
The row labels are drawn with the public `--seed`: they are a function of the release only.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tdpdm.config import RunConfig
from tdpdm.models.ambient import AmbientDenoiser, ambient_loss
from tdpdm.stages.context import RunContext
from tdpdm.stages.deconvolve import class_posteriors, fit_release_mixture, read_release
from tdpdm.stages.diffuse import train_diffusion
from tdpdm.stages.plan import Stage2Plan


def inferred_labels(posteriors: np.ndarray, seed: int) -> np.ndarray:
    """One class a row, drawn from its posterior (not the arg-max: a draw keeps each class's
    share of ambiguous rows, so the classes keep their spread)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA3B1]))
    cumulative = posteriors.cumsum(axis=1)
    u = rng.random(len(posteriors))[:, None] * cumulative[:, -1:]
    return (u > cumulative).sum(axis=1).clip(max=posteriors.shape[1] - 1).astype(np.int64)


def fit_ambient_release(uri: str, cfg: RunConfig, *, progress: bool) -> AmbientDenoiser:
    """The ambient denoiser of the release at `uri`, conditioned on jointly inferred labels."""
    release = read_release(uri)
    s2 = cfg.stage2
    mixture = fit_release_mixture(release, s2, seed=cfg.seed, progress=progress)
    posteriors = class_posteriors(
        mixture, release.latents, release.label_vectors, noise_std=release.noise_std,
        label_noise_std=release.label_noise_std,
    )  # fmt: skip
    labels = inferred_labels(posteriors, cfg.seed)
    unit = max(float(release.latents.std()), 1e-6)  # public: a statistic of the release
    classes = release.label_vectors.shape[1]
    model = AmbientDenoiser(
        release.latents.shape[1], classes, s2.hidden, s2.depth,
        noise_var=(release.noise_std / unit) ** 2, unit=unit,
    )  # fmt: skip
    return train_diffusion(
        release.latents / unit, labels, s2, num_classes=classes, plan=None, session=None,
        device=cfg.device, seed=cfg.seed, progress=progress, model=model, loss=ambient_loss,
    )  # fmt: skip


class AmbientReleaseDiffusion:
    """Stage-2 model: ambient diffusion on a DP release (the `Stage2Model` seam)."""

    name = "ambient-diffusion"
    needs_release = True

    def plan(self, cfg, n_records, adjacency, delta, spent) -> Stage2Plan:
        raise ValueError("ambient diffusion learns only from a DP release (released mode)")

    def fit(self, ctx: RunContext, data, plan, session) -> nn.Module:
        if data.release_uri is None or plan is not None:
            raise ValueError("ambient diffusion needs a DP release and spends nothing")
        ctx.log("stage 2: ambient diffusion on the DP release, its noise known (post-processing)")
        with ctx.timed("ambient_diffusion", dp_sgd=False):
            return fit_ambient_release(data.release_uri, ctx.cfg, progress=ctx.cfg.progress)
