"""A run's privacy plan: every mechanism it will run, calibrated before any record is read.

Stage 1 gets `stage1.epsilon_fraction` of the target epsilon on its own; the second mechanism
(stage-2 DP-SGD in `private` mode, the per-record release in `released` mode) is then calibrated
so that the *composition* of both meets the target: composition under PRV/PLD is sub-additive,
so this spends the budget more fully than splitting epsilons linearly.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdpdm.config import RunConfig
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.calibration import ImpossibleBudgetError, calibrate_noise
from tdpdm.privacy.events import Event, GaussianEvent
from tdpdm.stages.dpsgd import DPSGDPlan

ENCODER, DIFFUSION, RELEASE = "encoder", "diffusion", "latent_release"
LIPSCHITZ_VAE, LIPSCHITZ_RELEASE = "lipschitz_vae", "lipschitz_release"


@dataclass(frozen=True)
class PrivacyPlan:
    mode: str
    adjacency: Adjacency
    target_epsilon: float
    delta: float
    n_records: int
    encoder: DPSGDPlan
    diffusion: DPSGDPlan | None = None
    release_noise: float | None = None
    release_stage: str = RELEASE

    def release_event(self) -> GaussianEvent:
        if self.release_noise is None:
            raise ValueError("this plan has no release")
        return GaussianEvent(noise_multiplier=self.release_noise, count=1, stage=self.release_stage)

    def events(self) -> list[Event]:
        events: list[Event] = [self.encoder.event()]
        if self.diffusion is not None:
            events.append(self.diffusion.event())
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
) -> PrivacyPlan:
    """Calibrate every noise multiplier of the run to `cfg.epsilon` at `delta`.

    `encoder_only` (the `tdpdm encode` command in private mode) gives stage 1 the whole target;
    stage 2 is then planned later by `plan_diffusion` against what stage 1 spent."""
    check_feasible(cfg, n_records, adjacency, delta)
    s1 = cfg.stage1
    # `lipschitz-vae` (released mode only, see config): the same two mechanisms, DP-SGD of the
    # VAE then one Gaussian release, under their own stage names (stages/lipschitz_release.py).
    lipschitz = s1.mechanism == "lipschitz-vae"
    encoder_stage, release_stage = (
        (LIPSCHITZ_VAE, LIPSCHITZ_RELEASE) if lipschitz else (ENCODER, RELEASE)
    )

    def encoder(sigma: float) -> DPSGDPlan:
        return DPSGDPlan.from_epochs(
            encoder_stage,
            n_records=n_records,
            batch_size=s1.batch_size,
            epochs=s1.epochs,
            noise_multiplier=sigma,
            max_grad_norm=s1.max_grad_norm,
        )

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
    diff = plan_diffusion(cfg, n_records, adjacency, delta, [enc.event()])
    return PrivacyPlan(cfg.mode, adjacency, cfg.epsilon, delta, n_records, enc, diffusion=diff)


def plan_diffusion(
    cfg: RunConfig, n_records: int, adjacency: Adjacency, delta: float, spent: list[Event]
) -> DPSGDPlan:
    """Stage-2 DP-SGD calibrated so that, composed with `spent`, it meets `cfg.epsilon`."""
    s2 = cfg.stage2

    def diffusion(sigma: float) -> DPSGDPlan:
        return DPSGDPlan.from_epochs(
            DIFFUSION,
            n_records=n_records,
            batch_size=s2.batch_size,
            epochs=s2.epochs,
            noise_multiplier=sigma,
            max_grad_norm=s2.max_grad_norm,
        )

    sigma2 = calibrate_noise(
        lambda s: [diffusion(s).event()], cfg.epsilon, delta, adjacency, fixed_events=spent
    )
    return diffusion(sigma2)
