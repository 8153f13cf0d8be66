"""Stage 1 as a seam: a `Stage1Mechanism` names the model trained with DP-SGD on the private
records (its `TrainingInputs`: a picklable factory, the per-record tensors and loss, so the same
pieces run in-process or on Ray Train workers; a label objective is one such choice), and what it
produces afterwards: a DP release of per-record latents (accounted by the plan's release event)
or private latents for a DP stage 2.

Two mechanisms: `dpsgd-autoencoder` and `lipschitz-vae`. Adding one: a class like these and a
line in `STAGE1_MECHANISMS`; `stages/plan.py` states what it spends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from tdpdm.config import RunConfig
from tdpdm.data.private import PrivateTrainingSet
from tdpdm.models.autoencoder import LabelledAutoencoder
from tdpdm.models.lipschitz_vae import LabelledLipschitzVAE
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.events import event_to_dict
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages import lipschitz_release as lipschitz
from tdpdm.stages.artifacts import save_model
from tdpdm.stages.context import RunContext
from tdpdm.stages.dpsgd import LossFn, train_dpsgd
from tdpdm.stages.dpsgd_plan import DPSGDPlan
from tdpdm.stages.encode import (
    build_autoencoder,
    decoder_classes,
    encode,
    images_to_tensor,
    labelled_reconstruction_loss,
    latent_size,
    model_shape,
    new_autoencoder,
    new_labelled_autoencoder,
    reconstruction_loss,
)
from tdpdm.stages.latents_io import write_latents
from tdpdm.stages.plan import PrivacyPlan
from tdpdm.stages.release import release_latents, release_scales

ModelFactory = Callable[[], nn.Module]
Trainer = Callable[
    [RunContext, ModelFactory, list[torch.Tensor], LossFn, DPSGDPlan, PrivacySession, MechanismKey],
    tuple[nn.Module, dict[str, Any]],
]
"""`train(ctx, factory, tensors, loss_fn, plan, session, key) -> (model, execution details)`:
in-process (`train_locally`) or on Ray Train (`distributed/stage1_train.py`, via the pipeline)."""


@dataclass(frozen=True)
class TrainingInputs:
    """What DP-SGD trains on: a picklable model factory, the per-record tensors (clipped and
    noised together, so every one of them is covered by the encoder event) and the loss."""

    factory: ModelFactory
    tensors: list[torch.Tensor]
    loss_fn: LossFn


def _with_labels(
    plain: TrainingInputs,
    cfg: RunConfig,
    labels: np.ndarray,
    num_classes: int,
    labelled_model: Callable[..., nn.Module],
    labelled_loss: Callable[..., torch.Tensor],
) -> TrainingInputs:
    """`plain`, with the labels as a second per-record tensor (in the same clipped, noised
    batches) when the decoder reads them (`stage1.conditional_decoder`) or a label objective
    is on; with `stage1.label_objective_weight` > 0 also the model wrapped with a label head
    (`labelled_model(factory, num_classes)`) and `labelled_loss(..., weight=w)`."""
    weight = cfg.stage1.label_objective_weight
    if weight <= 0 and not cfg.stage1.conditional_decoder:
        return plain
    tensors = [*plain.tensors, torch.from_numpy(np.asarray(labels, dtype=np.int64))]
    if weight <= 0:
        return TrainingInputs(plain.factory, tensors, plain.loss_fn)
    return TrainingInputs(
        functools.partial(labelled_model, plain.factory, num_classes),
        tensors,
        functools.partial(labelled_loss, weight=weight),
    )


@dataclass(frozen=True)
class Stage1Output:
    model: nn.Module
    latents: np.ndarray
    labels: np.ndarray
    label_vectors: np.ndarray | None
    info: dict[str, Any]
    """`kind`: `dp_release` (publishable) or `sensitive_intermediate`; plus public metadata."""

    @property
    def released(self) -> bool:
        return self.info["kind"] == "dp_release"


class Stage1Mechanism(Protocol):
    name: str
    title: str

    def training_inputs(
        self,
        cfg: RunConfig,
        plan: PrivacyPlan,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
    ) -> TrainingInputs:
        """The model factory, tensors and per-record loss of this mechanism's DP-SGD."""
        ...

    def trained(self, model: nn.Module) -> nn.Module:
        """The model to keep after training (training-only parts, such as a head, dropped)."""
        ...

    def blank(self, cfg: RunConfig, num_classes: int) -> nn.Module:
        """An untrained model of the configured shape (to load saved weights into);
        `num_classes` shapes a label-conditioned decoder."""
        ...

    def produce(
        self,
        ctx: RunContext,
        model: nn.Module,
        images: np.ndarray,
        labels: np.ndarray,
        plan: PrivacyPlan,
        session: PrivacySession,
    ) -> Stage1Output:
        """After training: the latents stage 2 gets, released (and recorded) if so planned."""
        ...


def decoder_latent_noise_std(cfg: RunConfig, plan: PrivacyPlan) -> float:
    """The std of `stage1.decoder_latent_noise` on the latent's own scale: the release's noise
    std (noise multiplier x clip norm) over the factor that puts a latent into the release."""
    choice = cfg.stage1.decoder_latent_noise
    if choice is None:
        return 0.0
    if choice != "release":
        return float(choice)
    if cfg.mode != "released":
        raise ValueError("stage1.decoder_latent_noise=release needs mode released (no release)")
    latent_scale, _ = release_scales(latent_size(cfg.stage1, cfg.image_size), cfg.release)
    return plan.release_event().noise_multiplier * cfg.release.clip_norm / latent_scale


class DPSGDAutoencoder:
    """The conv autoencoder; its latents are private, or released once with Gaussian noise."""

    name, title = "dpsgd-autoencoder", "autoencoder"

    def training_inputs(self, cfg, plan, images, labels, num_classes) -> TrainingInputs:
        """With `stage1.label_objective_weight`, a label head on the latent joins the model and
        the labels join the same clipped DP-SGD batches (the encoder event covers them)."""
        channels, image_size = model_shape(cfg)
        factory: ModelFactory = functools.partial(
            new_autoencoder,
            cfg.stage1,
            cfg.seed,
            channels=channels,
            image_size=image_size,
            num_classes=num_classes,
            latent_noise_std=decoder_latent_noise_std(cfg, plan),
        )
        plain = TrainingInputs(factory, [images_to_tensor(images)], reconstruction_loss)
        return _with_labels(
            plain, cfg, labels, num_classes, new_labelled_autoencoder, labelled_reconstruction_loss
        )

    def trained(self, model: nn.Module) -> nn.Module:
        if isinstance(model, LabelledAutoencoder):
            return model.autoencoder  # the label head is a training aid only, never saved
        return model

    def blank(self, cfg: RunConfig, num_classes: int) -> nn.Module:
        channels, image_size = model_shape(cfg)
        return build_autoencoder(
            cfg.stage1, channels=channels, image_size=image_size, num_classes=num_classes
        )

    def produce(self, ctx, model, images, labels, plan, session) -> Stage1Output:
        latents = encode(model, images, ctx.cfg.device)
        if ctx.cfg.mode != "released":
            return Stage1Output(model, latents, labels, None, {"kind": "sensitive_intermediate"})
        released = release_latents(
            latents,
            labels,
            num_classes=ctx.spec.num_classes,
            cfg=ctx.cfg.release,
            event=plan.release_event(),
            session=session,
            key=MechanismKey.fresh("release"),
        )
        info = {"kind": "dp_release", **released.metadata()}
        return Stage1Output(model, released.latents, released.labels, released.label_vectors, info)


class LipschitzVAEMechanism:
    """DP-SGD VAE with an exact Lipschitz bound, then one Gaussian release per record."""

    name, title = "lipschitz-vae", "Lipschitz VAE"

    def training_inputs(self, cfg, plan, images, labels, num_classes) -> TrainingInputs:
        noise_std = lipschitz.training_noise_std(cfg, plan.release_event())
        channels, image_size = model_shape(cfg)
        factory = functools.partial(
            lipschitz.make_vae,
            cfg.stage1.latent_dim,
            cfg.stage1.vae_hidden,
            noise_std,
            channels=channels,
            image_size=image_size,
            label_classes=decoder_classes(cfg.stage1, num_classes),
        )
        plain = TrainingInputs(factory, [images_to_tensor(images)], lipschitz.vae_loss)
        return _with_labels(
            plain, cfg, labels, num_classes, lipschitz.new_labelled_vae, lipschitz.labelled_vae_loss
        )

    def trained(self, model: nn.Module) -> nn.Module:
        if isinstance(model, LabelledLipschitzVAE):
            return model.vae  # the label head is a training aid only, never saved
        return model

    def blank(self, cfg: RunConfig, num_classes: int) -> nn.Module:
        return lipschitz.new_lipschitz_vae(cfg, num_classes)

    def produce(self, ctx, model, images, labels, plan, session) -> Stage1Output:
        model.project_weights()
        released = lipschitz.release(
            model,
            images,
            labels,
            num_classes=ctx.spec.num_classes,
            label_scale=ctx.cfg.release.label_scale,
            event=plan.release_event(),
            session=session,
            seed=ctx.cfg.seed,
            key=MechanismKey.fresh("lipschitz-release"),
        )
        ctx.log(
            f"Lipschitz release: L = {released.lipschitz_bound:.6f} (numerical check on data: "
            f"passed), sensitivity {released.sensitivity:.3f}, noise std {released.noise_std:.3f}"
        )
        return Stage1Output(
            model, released.latents, released.labels, released.label_vectors, released.info()
        )


STAGE1_MECHANISMS: dict[str, Stage1Mechanism] = {
    m.name: m for m in (DPSGDAutoencoder(), LipschitzVAEMechanism())
}


def train_locally(ctx, factory, tensors, loss_fn, plan, session, key):
    """The `Trainer` that runs DP-SGD in this process."""
    cfg = ctx.cfg
    torch.manual_seed(cfg.seed)  # public initial weights
    model = factory()
    train_dpsgd(
        model,
        tensors,
        loss_fn,
        plan,
        session,
        lr=cfg.stage1.lr,
        key=key,
        device=cfg.device,
        on_step=ctx.progress("encoder", plan.steps, plan.expected_batch_size),
        progress=cfg.progress,
        grad_sample_mode=cfg.stage1.grad_sample_mode,
        physical_batch_size=cfg.stage1.physical_batch_size,
    )
    return model, {"backend": "local", "num_workers": 1}


def run_stage1(
    ctx: RunContext,
    plan: PrivacyPlan,
    session: PrivacySession,
    records: PrivateTrainingSet,
    train: Trainer = train_locally,
) -> Stage1Output:
    """Read the private records under the charge, train the mechanism's model with DP-SGD,
    produce and write the latents (release or custodian part, as their kind says)."""
    cfg = ctx.cfg
    mechanism = STAGE1_MECHANISMS[cfg.stage1.mechanism]
    images, labels = records.open(session.grant)
    enc = plan.encoder
    ctx.log(
        f"stage 1: {mechanism.title} (DP-SGD), {enc.steps} steps, "
        f"sigma {enc.noise_multiplier:.3f}, q {enc.sampling_rate:.4f}"
    )
    inputs = mechanism.training_inputs(cfg, plan, images, labels, ctx.spec.num_classes)
    with ctx.timed("encoder", steps=enc.steps, mechanism=mechanism.name) as details:
        model, execution = train(
            ctx,
            inputs.factory,
            inputs.tensors,
            inputs.loss_fn,
            enc,
            session,
            MechanismKey.fresh("stage1-dpsgd"),
        )
        details |= execution
    model = mechanism.trained(model)
    with ctx.timed("latents", mode=cfg.mode) as details:
        out = mechanism.produce(ctx, model, images, labels, plan, session)
        del images
        save_model(out.model, ctx.layout.autoencoder)
        _write_latents(ctx, plan, session, out)
        details["dim"] = int(out.latents.shape[1])
    return out


def _write_latents(
    ctx: RunContext, plan: PrivacyPlan, session: PrivacySession, out: Stage1Output
) -> None:
    if out.released:
        bound = compute_epsilon(session.recorded, plan.delta, plan.adjacency)
        guarantee = bound.as_dict() | {"events": [event_to_dict(e) for e in session.recorded]}
        meta = out.info | {"sensitive": False, "guarantee": guarantee}
    else:
        meta = out.info | {
            "sensitive": True,
            "warning": "private latents: custodian-only, never publish",
        }
    write_latents(
        ctx.layout.latents(ctx.cfg.mode),
        out.latents,
        out.labels,
        meta,
        # row order: a secret shuffle (a public one would tie rows back to file positions)
        seed=MechanismKey.fresh("latents-order").numpy(),
        label_vectors=out.label_vectors,
        private=not out.released,
    )
