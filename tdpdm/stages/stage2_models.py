"""Stage 2 as a seam: a `Stage2Model` says how it is planned (what it spends when it reads
private latents) and how it is fitted; sampling and decoding are the same for all.

On a DP release: `diffusion` (the class-conditional latent denoiser, plain training on the
noisy latents), `deconvolution` (a Gaussian mixture fitted through the release's known noise)
and `ambient-diffusion` (a denoiser trained through that noise, `stages/ambient.py`): all
post-processing. On private latents: `diffusion` by DP-SGD, `dp-moments`, `dp-mixture`. The
Ray Tune search (`distributed/tune_stage2.py`) is one more strategy; it lives on the floor above
because it needs Ray.

Adding a model: one module with a class like the two below, and one line in `STAGE2_MODELS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from torch import nn

from tdpdm.config import RunConfig
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.calibration import calibrate_noise
from tdpdm.privacy.events import Event
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages.ambient import AmbientReleaseDiffusion
from tdpdm.stages.context import RunContext
from tdpdm.stages.deconvolve import fit_release_model
from tdpdm.stages.diffuse import train_diffusion
from tdpdm.stages.dp_mixture import DPMixture
from tdpdm.stages.dp_moments import DPMoments
from tdpdm.stages.dpsgd_plan import DPSGDPlan
from tdpdm.stages.plan import DIFFUSION, Stage2Plan


@dataclass(frozen=True)
class Stage2Input:
    """The latents stage 2 learns from: a DP release (`release_uri` set, free) or private
    latents read under `session`'s charge."""

    latents: np.ndarray
    labels: np.ndarray
    release_uri: str | None = None


class Stage2Model(Protocol):
    name: str
    needs_release: bool
    """True when the model can only learn from a DP release (it has no private-mode plan)."""

    def plan(
        self, cfg: RunConfig, n_records: int, adjacency: Adjacency, delta: float, spent: list[Event]
    ) -> Stage2Plan:
        """Calibrated so that, composed with `spent`, the run meets `cfg.epsilon`."""
        ...

    def fit(
        self,
        ctx: RunContext,
        data: Stage2Input,
        plan: Stage2Plan | None,
        session: PrivacySession | None,
    ) -> nn.Module:
        """Fit on `data`; with a `plan`, spend exactly it on `session`."""
        ...


class LatentDiffusion:
    """The class-conditional latent denoiser (`stages/diffuse.py`)."""

    name = "diffusion"
    needs_release = False

    def plan(
        self, cfg: RunConfig, n_records: int, adjacency: Adjacency, delta: float, spent: list[Event]
    ) -> DPSGDPlan:
        def segment(sigma: float) -> DPSGDPlan:
            return DPSGDPlan.for_section(DIFFUSION, n_records, cfg.stage2, sigma)

        sigma = calibrate_noise(
            lambda s: segment(s).events(), cfg.epsilon, delta, adjacency, fixed_events=spent
        )
        return segment(sigma)

    def fit(self, ctx, data, plan, session) -> nn.Module:
        cfg = ctx.cfg
        steps = plan.steps if isinstance(plan, DPSGDPlan) else 0
        how = (
            f"DP-SGD, {steps} steps, sigma {plan.noise_multiplier:.3f}"
            if plan
            else "on the DP release"
        )
        ctx.log(f"stage 2: latent diffusion ({how})")
        with ctx.timed("diffusion", dp_sgd=plan is not None, steps=steps):
            return train_diffusion(
                data.latents,
                data.labels,
                cfg.stage2,
                num_classes=ctx.spec.num_classes,
                plan=plan,
                session=session if plan else None,
                device=cfg.device,
                seed=cfg.seed,
                key=MechanismKey.fresh("stage2-dpsgd") if plan else None,
                progress=cfg.progress,
                on_step=ctx.progress("diffusion", max(steps, 1), cfg.stage2.batch_size),
            )


class ReleaseMixture:
    """Class-conditional Gaussian mixture deconvolved from a DP release (`deconvolve.py`)."""

    name = "deconvolution"
    needs_release = True

    def plan(self, cfg, n_records, adjacency, delta, spent) -> Stage2Plan:
        raise ValueError("the deconvolved mixture learns only from a DP release (released mode)")

    def fit(self, ctx, data, plan, session) -> nn.Module:
        if data.release_uri is None or plan is not None:
            raise ValueError("the deconvolved mixture needs a DP release and spends nothing")
        cfg = ctx.cfg
        ctx.log("stage 2: Gaussian mixture deconvolved from the DP release (post-processing)")
        with ctx.timed("deconvolution", dp_sgd=False) as details:
            model = fit_release_model(
                data.release_uri, cfg.stage2, seed=cfg.seed, progress=cfg.progress
            )
            details["components"] = model.log_weights.numel()
        return model


STAGE2_MODELS: dict[str, Stage2Model] = {
    m.name: m
    for m in (
        LatentDiffusion(),
        ReleaseMixture(),
        AmbientReleaseDiffusion(),
        DPMoments(),
        DPMixture(),
    )
}


def stage2_model(cfg: RunConfig) -> Stage2Model:
    """The configured model: `stage2.released_model` on a DP release, `stage2.private_model`
    on private latents."""
    s2 = cfg.stage2
    return STAGE2_MODELS[s2.released_model if cfg.mode == "released" else s2.private_model]
