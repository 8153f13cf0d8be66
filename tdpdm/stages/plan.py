"""A run's privacy plan: every mechanism it will run, calibrated before any record is read.

Stage 1 gets `stage1.epsilon_fraction` of the target epsilon on its own; the second mechanism
(the stage-2 model's in `private` mode, the per-record release in `released` mode) is then
calibrated so that the *composition* of both meets the target: composition under PRV/PLD is
sub-additive, so this spends the budget more fully than splitting epsilons linearly. How a
stage-2 model is planned is the model's own business (`stages/stage2_models.py`): the run plan
takes its planner as a function of what stage 1 spends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tdpdm.config import RunConfig
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.calibration import ImpossibleBudgetError, calibrate_noise
from tdpdm.privacy.events import Event, GaussianEvent
from tdpdm.stages.dpsgd_plan import DPSGDPlan

ENCODER, DIFFUSION, RELEASE = "encoder", "diffusion", "latent_release"
LIPSCHITZ_VAE, LIPSCHITZ_RELEASE = "lipschitz_vae", "lipschitz_release"


class Stage2Plan(Protocol):
    """What a stage-2 model will spend (a DP-SGD segment, a Gaussian release, ...)."""

    def events(self) -> list[Event]: ...


Stage2Planner = Callable[[list[Event]], Stage2Plan]
"""`planner(spent)`: the stage-2 plan calibrated so that, composed with `spent`, the run meets
its target."""


@dataclass(frozen=True)
class PrivacyPlan:
    mode: str
    adjacency: Adjacency
    target_epsilon: float
    delta: float
    n_records: int
    encoder: DPSGDPlan
    stage2: Stage2Plan | None = None
    """Stage 2's own mechanisms when it reads private latents (None: post-processing, or a
    search whose trials are planned and charged one by one)."""
    release_noise: float | None = None
    release_stage: str = RELEASE

    def release_event(self) -> GaussianEvent:
        if self.release_noise is None:
            raise ValueError("this plan has no release")
        return GaussianEvent(noise_multiplier=self.release_noise, count=1, stage=self.release_stage)

    def events(self) -> list[Event]:
        events: list[Event] = [self.encoder.event()]
        if self.stage2 is not None:
            events.extend(self.stage2.events())
        if self.release_noise is not None:
            events.append(self.release_event())
        return events

    def planned_epsilon(self) -> float:
        return compute_epsilon(self.events(), self.delta, self.adjacency).epsilon


def default_adjacency(mode: str) -> Adjacency:
    """`released` is only DP with a public record count (replace-one); `private` is central DP
    under the stronger add/remove relation."""
    return Adjacency.REPLACE_ONE if mode == "released" else Adjacency.ADD_REMOVE


def check_feasible(cfg: RunConfig, n_records: int, adjacency: Adjacency, delta: float) -> None:
    if n_records < 2:
        raise ImpossibleBudgetError(f"{cfg.dataset}: {n_records} records is too few to train on")
    if delta >= 1.0 / n_records:
        raise ImpossibleBudgetError(
            f"delta {delta:g} >= 1/n = {1.0 / n_records:.3g} for n={n_records} records: such a "
            "guarantee allows publishing a record outright; use delta < 1/n"
        )
    if cfg.mode == "released" and adjacency is not Adjacency.REPLACE_ONE:
        raise ImpossibleBudgetError(
            f"released mode is DP only under replace-one adjacency, but the {cfg.dataset} budget "
            f"is {adjacency.value}; use --mode private or a replace_one budget"
        )


def plan_run(
    cfg: RunConfig,
    n_records: int,
    adjacency: Adjacency,
    delta: float,
    encoder_only: bool = False,
    stage2: Stage2Planner | None = None,
) -> PrivacyPlan:
    """Calibrate every noise multiplier of the run to `cfg.epsilon` at `delta`.

    `encoder_only` (the `tdpdm encode` command in private mode) gives stage 1 the whole target;
    stage 2 is then planned later against what stage 1 spent. `stage2` plans the stage-2 model
    (needed in `private` mode unless encoder-only or searched by Tune)."""
    check_feasible(cfg, n_records, adjacency, delta)
    s1 = cfg.stage1
    # `lipschitz-vae` (released mode only, see config): the same two mechanisms, DP-SGD of the
    # VAE then one Gaussian release, under their own stage names (stages/lipschitz_release.py).
    lipschitz = s1.mechanism == "lipschitz-vae"
    encoder_stage, release_stage = (
        (LIPSCHITZ_VAE, LIPSCHITZ_RELEASE) if lipschitz else (ENCODER, RELEASE)
    )

    def encoder(sigma: float) -> DPSGDPlan:
        return DPSGDPlan.for_section(encoder_stage, n_records, s1, sigma)

    share = 1.0 if encoder_only and cfg.mode == "private" else s1.epsilon_fraction
    sigma1 = calibrate_noise(lambda s: [encoder(s).event()], cfg.epsilon * share, delta, adjacency)
    enc = encoder(sigma1)
    if cfg.mode == "released":
        sigma_r = calibrate_noise(
            lambda s: [GaussianEvent(noise_multiplier=s, stage=release_stage)],
            cfg.epsilon,
            delta,
            adjacency,
            fixed_events=[enc.event()],
        )
        return PrivacyPlan(
            cfg.mode,
            adjacency,
            cfg.epsilon,
            delta,
            n_records,
            enc,
            release_noise=sigma_r,
            release_stage=release_stage,
        )
    if encoder_only or cfg.tune.trials:
        # With a stage-2 search each trial is planned and charged on its own (distributed/).
        return PrivacyPlan(cfg.mode, adjacency, cfg.epsilon, delta, n_records, enc)
    if stage2 is None:
        raise ValueError("a private run needs its stage-2 model's planner")
    return PrivacyPlan(
        cfg.mode, adjacency, cfg.epsilon, delta, n_records, enc, stage2=stage2([enc.event()])
    )
