"""Stage 1 with the `lipschitz-vae` mechanism: DP-SGD training, a proven Lipschitz bound, and
one Gaussian release of each record's [mu(x), label] (DESIGN 3.5, arXiv 2304.11336).

Privacy, exactly:
- The VAE (encoder and decoder) is trained on the private records, so it is trained with DP-SGD
  (`train_dpsgd`, one Poisson-Gaussian event). No public data set exists here to train it on
  instead; with one, this event would disappear and the release alone would remain.
- The trained encoder mean mu has Lipschitz constant <= L = prod ||W_i||_2 (exact, from the
  final weights), and inputs lie in [0, 1]^(C H W), of L2 diameter D = sqrt(C H W) (28 for grey
  28x28), computed from the configured shape, never from the data. The released vector of a
  record is v(x, y) = [mu(x), b * onehot(y)] + N(0, s^2 I). Replacing one record changes v's
  mean by at most Delta = sqrt((D L)^2 + 2 b^2): a Gaussian mechanism of sensitivity Delta,
  run once per record on disjoint records, i.e. one Gaussian mechanism on the data set under
  replace-one adjacency (the record count is public, as in `released` mode; add/remove does not
  apply to a per-record release).
- Project convention (DESIGN 3.3): a noise multiplier is std over the per-record norm C with
  replace-one sensitivity 2C (dp-accounting's REPLACE_ONE Gaussian shifts by +-C). So C =
  Delta / 2 and s = multiplier * Delta / 2: the ledger's `GaussianEvent(multiplier)` is accounted
  as a Gaussian mechanism with sensitivity/std ratio Delta / s = 2 / multiplier.
- The label length b is fixed from `release.label_scale` (lambda, the label's share of the
  design sensitivity): b = lambda / sqrt(1 - lambda^2) * D / sqrt(2), so that at L = 1 the label
  takes lambda^2 of Delta^2.
- The numerical check reads the private records (pairs of them, and the encoder's Jacobian at
  them) only to verify an already proven bound; when the bound holds its outcome is always
  "pass", so it reveals nothing. A failure means a bug: nothing is released and the run stops.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tdpdm.config import RunConfig
from tdpdm.models.lipschitz_vae import (
    INPUT_DIAMETER,
    LabelledLipschitzVAE,
    LipschitzVAE,
    input_diameter,
)
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages.dpsgd import StepCallback, train_dpsgd
from tdpdm.stages.dpsgd_plan import DPSGDPlan
from tdpdm.stages.encode import batch_labels, decoder_classes, images_to_tensor, model_shape

DESIGN_BOUND = 1.0
"""The Lipschitz bound the release noise is planned for: every encoder layer in the unit
spectral ball. The exact bound of the final weights must not exceed it."""
CHECK_TOLERANCE = 1e-6
"""Relative slack for float64 rounding in the numerical check."""


class LipschitzCheckError(RuntimeError):
    """The encoder's Lipschitz bound does not hold (a bug): nothing may be released."""


def label_length(label_scale: float, diameter: float = INPUT_DIAMETER) -> float:
    """b: the length of the scaled one-hot label inside the release (`diameter`: the input
    set's, `input_diameter(channels, image_size)`; default grey 28x28)."""
    return label_scale / math.sqrt(1.0 - label_scale**2) * diameter / math.sqrt(2.0)


def release_sensitivity(
    lipschitz: float, label_scale: float, diameter: float = INPUT_DIAMETER
) -> float:
    """Delta = sqrt((L * D)^2 + 2 b^2): the largest L2 change of [mu(x), b onehot(y)] when one
    record (image and label) is replaced by any other; D = sqrt(C H W) from the shape."""
    b = label_length(label_scale, diameter)
    return math.sqrt((lipschitz * diameter) ** 2 + 2.0 * b**2)


def release_std(
    event: GaussianEvent, lipschitz: float, label_scale: float, diameter: float = INPUT_DIAMETER
) -> float:
    """s = multiplier * Delta / 2 (the project's noise-multiplier convention, see the module)."""
    return event.noise_multiplier * release_sensitivity(lipschitz, label_scale, diameter) / 2.0


def config_diameter(cfg: RunConfig) -> float:
    """The input set's diameter for the configured (public) image shape."""
    return input_diameter(*model_shape(cfg))


@dataclass(frozen=True)
class LipschitzCheck:
    bound: float
    max_ratio_pairs: float
    """Largest ||mu(x) - mu(x')|| / ||x - x'|| over pairs of records."""
    max_ratio_local: float
    """Largest ratio over pairs (x, x + eps v), v the Jacobian's top singular direction."""
    pairs: int

    @property
    def max_ratio(self) -> float:
        return max(self.max_ratio_pairs, self.max_ratio_local)

    def as_dict(self) -> dict[str, float | str]:
        """What may be published: pass/fail and public counts. The observed ratios are maxima
        over private records (unnoised statistics): they never leave the process."""
        return {"bound": self.bound, "result": "passed", "pairs_checked": self.pairs}


@torch.no_grad()
def _pair_ratios(mean: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dx = (x - y).flatten(1).norm(dim=1)
    dz = (mean(x) - mean(y)).norm(dim=1)
    keep = dx > 0
    return dz[keep] / dx[keep]


def _local_ratios(mean: nn.Module, x: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Power iteration on J(x)^T J(x) per point, then the finite ratio along the top direction:
    the pairs that come closest to a Lipschitz constant (for a piecewise-linear map, ||J|| is
    attained locally)."""
    flat = x.flatten(1)
    v = torch.randn(flat.shape, dtype=flat.dtype, generator=torch.Generator().manual_seed(0))
    v = v / v.norm(dim=1, keepdim=True)

    def f(inp: torch.Tensor) -> torch.Tensor:
        return mean(inp.view_as(x))

    for _ in range(iters):
        _, jv = torch.func.jvp(f, (flat,), (v,))
        _, vjp = torch.func.vjp(f, flat)
        (jtjv,) = vjp(jv)
        v = jtjv / jtjv.norm(dim=1, keepdim=True).clamp_min(1e-300)
    with torch.no_grad():
        return _pair_ratios(mean, x, (flat + eps * v).view_as(x))


def check_lipschitz(
    mean: nn.Module,
    images: torch.Tensor,
    bound: float,
    *,
    pairs: int = 4096,
    local_points: int = 256,
    power_iters: int = 20,
    seed: int = 0,
) -> LipschitzCheck:
    """Verify on data that no observed ||mu(x) - mu(x')|| / ||x - x'|| exceeds `bound`.

    Runs in float64 on a copy of `mean`. Raises LipschitzCheckError on a violation."""
    mean = _float64_copy(mean)
    x = images.double()
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    i = torch.randint(n, (pairs,), generator=g)
    j = torch.randint(n, (pairs,), generator=g)
    pair = torch.cat(
        [_pair_ratios(mean, x[i[k : k + 1024]], x[j[k : k + 1024]]) for k in range(0, pairs, 1024)]
    )
    local_idx = torch.randperm(n, generator=g)[: min(local_points, n)]
    uniform = torch.rand((min(local_points, n) // 4 + 1, *x.shape[1:]), generator=g).double()
    local = torch.cat(
        [
            _local_ratios(mean, x[local_idx], power_iters, 1e-3),
            _local_ratios(mean, uniform, power_iters, 1e-3),
        ]
    )
    result = LipschitzCheck(bound, float(pair.max()), float(local.max()), len(pair) + len(local))
    if result.max_ratio > bound * (1 + CHECK_TOLERANCE):
        raise LipschitzCheckError(
            f"encoder Lipschitz check failed: observed ratio {result.max_ratio:.6g} exceeds "
            f"the bound {bound:.6g}; nothing is released"
        )
    return result


def _float64_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).cpu().double().eval()


def vae_loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """Per-record reconstruction BCE summed over pixels (the ELBO's likelihood term), shape (B,).

    Summed, not averaged: per-record gradients then reach the clipping norm, so DP-SGD's noise
    is not spent on gradients far smaller than the norm it is calibrated for. The posterior std
    is fixed (the release noise), so the ELBO's KL term to a Gaussian prior would only shrink mu,
    i.e. the signal the release lets through; it is left out."""
    return _summed_bce(model(batch[0], batch_labels(batch)), batch[0])


def _summed_bce(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=(1, 2, 3))


def labelled_vae_loss(
    model: nn.Module, batch: list[torch.Tensor], *, weight: float
) -> torch.Tensor:
    """`vae_loss` plus `weight` times the label head's cross-entropy per record, shape (B,), for
    a `LabelledLipschitzVAE` on (images, labels) batches. The cross-entropy is scaled by the
    pixel count, as the BCE here is summed over pixels (the autoencoder's is averaged): a weight
    then means the same balance in both mechanisms."""
    x, y = batch[0], batch[1]
    recon, label_logits = model(x, y)
    pixels = x[0].numel()
    return _summed_bce(recon, x) + weight * pixels * F.cross_entropy(
        label_logits, y, reduction="none"
    )


def new_labelled_vae(factory, num_classes: int) -> LabelledLipschitzVAE:
    """`factory()`'s VAE with a label head (module level: picklable for Ray workers)."""
    return LabelledLipschitzVAE(factory(), num_classes)


def train_lipschitz_vae(
    images: np.ndarray,
    cfg: RunConfig,
    plan: DPSGDPlan,
    release_event: GaussianEvent,
    session: PrivacySession,
    *,
    key: MechanismKey,
    progress: bool = True,
    on_step: StepCallback | None = None,
    distributed: bool = False,
) -> LipschitzVAE:
    """DP-SGD training of the VAE in this process, the exact spectral projection before every
    step's forward pass (see `LipschitzVAE.forward`) and after the last one."""
    torch.manual_seed(cfg.seed)
    channels, image_size = model_shape(cfg)
    model = make_vae(
        cfg.stage1.latent_dim,
        cfg.stage1.vae_hidden,
        training_noise_std(cfg, release_event),
        channels=channels,
        image_size=image_size,
    )
    train_dpsgd(
        model,
        [images_to_tensor(images)],
        vae_loss,
        plan,
        session,
        lr=cfg.stage1.lr,
        key=key,
        device=cfg.device,
        on_step=on_step,
        progress=progress,
        grad_sample_mode=cfg.stage1.grad_sample_mode,
        physical_batch_size=cfg.stage1.physical_batch_size,
        distributed=distributed,
    )
    model.project_weights()
    return model


def new_lipschitz_vae(cfg: RunConfig, num_classes: int = 0) -> LipschitzVAE:
    """An untrained VAE of the configured shape (`num_classes`: see `decoder_classes`)."""
    channels, image_size = model_shape(cfg)
    return LipschitzVAE(
        latent_dim=cfg.stage1.latent_dim,
        hidden=cfg.stage1.vae_hidden,
        channels=channels,
        image_size=image_size,
        label_classes=decoder_classes(cfg.stage1, num_classes),
    )


CLEAN_TRAINING_NOISE = 0.5
"""Posterior std (mu scale) when stage 2 samples clean latents: a VAE's usual regulariser, small
beside the distance between two digits' means (up to ~4 on this scale); fixed, not tuned on data."""


def training_noise_std(cfg: RunConfig, release_event: GaussianEvent) -> float:
    """The posterior std while training (`stage1.vae_training_noise`). The release noise at the
    design bound teaches the decoder to decode the noisy latents the release publishes; the
    deconvolved mixture samples *clean* latents, and a decoder trained only on noise that large
    maps every clean latent to the mean image (issue 14), so it gets `CLEAN_TRAINING_NOISE`."""
    choice = cfg.stage1.vae_training_noise
    if choice is None:
        choice = "release" if cfg.stage2.released_model == "diffusion" else CLEAN_TRAINING_NOISE
    if choice == "release":
        diameter = config_diameter(cfg)
        return release_std(release_event, DESIGN_BOUND, cfg.release.label_scale, diameter)
    return float(choice)


def make_vae(
    latent_dim: int,
    hidden: int,
    noise_std: float,
    *,
    channels: int = 1,
    image_size: int = 28,
    label_classes: int = 0,
) -> LipschitzVAE:
    """A fresh VAE with its posterior std set (module level: a picklable model factory for
    Ray Train workers via functools.partial)."""
    model = LipschitzVAE(
        latent_dim=latent_dim,
        hidden=hidden,
        channels=channels,
        image_size=image_size,
        label_classes=label_classes,
    )
    model.noise_std.fill_(noise_std)
    return model


def release_noise(key: MechanismKey, shape: tuple[int, int], std: float) -> np.ndarray:
    """The release's Gaussian noise, (records, latent + label coordinates), from the secret key."""
    return key.numpy().normal(0.0, std, size=shape)


@dataclass(frozen=True)
class LipschitzRelease:
    latents: np.ndarray
    """(N, latent_dim) released latents w = (mu(x) + s noise - mu(c)) / R (model's scale)."""
    labels: np.ndarray
    """(N,) labels decoded (arg-max) from the released noisy one-hot part."""
    label_vectors: np.ndarray
    """(N, classes) released noisy one-hot labels divided by b (clean part: exactly one-hot)."""
    lipschitz_bound: float
    sensitivity: float
    noise_std: float
    label_length: float
    check: LipschitzCheck
    input_diameter: float = INPUT_DIAMETER
    """sqrt(C H W) of the model's (public) input shape."""

    def info(self) -> dict[str, object]:
        return {
            "kind": "dp_release",
            "mechanism": "lipschitz-vae",
            "lipschitz_bound": self.lipschitz_bound,
            "input_diameter": self.input_diameter,
            "sensitivity": self.sensitivity,
            "noise_std": self.noise_std,
            "noise_std_per_coordinate": self.noise_std / (self.input_diameter / 2),
            "label_noise_std_per_coordinate": self.noise_std / self.label_length,
            "lipschitz_check": self.check.as_dict(),
        }


@torch.no_grad()
def _means(model: LipschitzVAE, images: np.ndarray, batch: int = 4096) -> np.ndarray:
    """mu(x) in float64 (the function the bound is proven for, up to float64 rounding)."""
    mean = _float64_copy(model.encoder_mean)
    out = [
        mean(images_to_tensor(images[i : i + batch]).double()) for i in range(0, len(images), batch)
    ]
    return torch.cat(out).numpy()


def published_latents(model: LipschitzVAE, mu: np.ndarray) -> np.ndarray:
    """The release's public map from the mu scale to the published one, float64:
    w = mu / R - mu(c) / R (the model's `center`, set at release). `release` applies it to
    mu(x) + noise; on noiseless mu(x) it gives what the release would publish without noise."""
    return mu / model.latent_radius - model.center.double().cpu().numpy()


def clean_release(
    model: LipschitzVAE, images: np.ndarray, labels: np.ndarray, *, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(latents, label vectors) that `release` would publish for these records without its
    noise, float64: `published_latents` of mu(x) in float64 (as `release` computes it), and
    exactly onehot(y). Reads the records without DP: for custodian-only measurements
    (benchmarks/loss_budget_released.py) of a released model whose centre is set."""
    onehot = np.zeros((len(labels), num_classes))
    onehot[np.arange(len(labels)), labels] = 1.0
    return published_latents(model, _means(model, images)), onehot


def release(
    model: LipschitzVAE,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    label_scale: float,
    event: GaussianEvent,
    session: PrivacySession,
    seed: int,
    key: MechanismKey,
) -> LipschitzRelease:
    """Bound, check, then one Gaussian release per record; the event is recorded once it ran.

    `seed` (public) only picks the check's record pairs; the release noise comes from the
    secret `key` (see `release_noise`)."""
    model.cpu().eval()
    bound = model.lipschitz_bound()
    if not model.normalise or bound > DESIGN_BOUND * (1 + CHECK_TOLERANCE):
        raise LipschitzCheckError(
            f"encoder Lipschitz bound {bound:.6g} exceeds the design bound {DESIGN_BOUND} "
            "(spectral projection off or broken); nothing is released"
        )
    x = images_to_tensor(images)
    if x.shape[1:] != (model.channels, model.image_size, model.image_size):
        raise ValueError(f"images of shape {tuple(x.shape[1:])} for a model of another shape")
    check = check_lipschitz(model.encoder_mean, x, bound, seed=seed)
    diameter = model.input_diameter  # from the model's configured shape, never the data
    sensitivity = release_sensitivity(bound, label_scale, diameter)
    std = release_std(event, bound, label_scale, diameter)
    mu = _means(model, images)
    onehot = np.zeros((len(labels), num_classes))
    onehot[np.arange(len(labels)), labels] = label_length(label_scale, diameter)
    noise = release_noise(key, (len(mu), mu.shape[1] + num_classes), std)
    released_mu = mu + noise[:, : mu.shape[1]]
    released_label = onehot + noise[:, mu.shape[1] :]
    session.record(event)
    # What follows only transforms the release with public quantities: post-processing.
    model.noise_std.fill_(std)
    model.set_center()
    b = label_length(label_scale, diameter)
    return LipschitzRelease(
        latents=published_latents(model, released_mu).astype(np.float32),
        labels=released_label.argmax(axis=1).astype(np.int64),
        label_vectors=(released_label / b).astype(np.float32),
        lipschitz_bound=bound,
        sensitivity=sensitivity,
        noise_std=std,
        label_length=b,
        check=check,
        input_diameter=diameter,
    )
