"""Stage 1, privacy encoding: train the autoencoder with DP-SGD; encode and decode with it.

Only the *weights* are DP. Encoding the private records again with the trained encoder is a
new access: in `private` mode its output stays a sensitive intermediate (stage 2 reads it under
DP-SGD), in `released` mode it goes straight into the Gaussian release (see `release.py`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tdpdm.config import RunConfig, Stage1Config
from tdpdm.models.autoencoder import (
    ConvAutoencoder,
    LabelledAutoencoder,
    LatentAutoencoder,
    SpatialAutoencoder,
)
from tdpdm.models.sharpen import unsharp_mask
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages.dpsgd import StepCallback, train_dpsgd
from tdpdm.stages.dpsgd_plan import DPSGDPlan


def model_shape(cfg: RunConfig) -> tuple[int, int]:
    """(channels, image_size) the stage-1 models take: public, from the config alone (a run's
    context resolves `channels` from the data's description before any model is built; a
    built-in is grey)."""
    return (cfg.channels or 1), cfg.image_size


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) grey or (N, C, H, W) -> float (N, C, H, W) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W) grey or (N, C, H, W): the layout the
    data sources give (`PrivateTrainingSet.open`)."""
    pixels = x.clamp(0, 1).mul(255).round_().to(torch.uint8)
    return (pixels.squeeze(1) if pixels.shape[1] == 1 else pixels).numpy()


def _pixel_bce(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return per_pixel.mean(dim=(1, 2, 3))


def batch_labels(batch: list[torch.Tensor]) -> torch.Tensor | None:
    """The labels of an (images, labels) batch, None for images alone: a label-conditioned
    decoder reads them (they ride in the same clipped, noised DP-SGD batches)."""
    return batch[1] if len(batch) > 1 else None


def reconstruction_loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """Per-record BCE over pixels, shape (B,)."""
    return _pixel_bce(model(batch[0], batch_labels(batch)), batch[0])


def labelled_reconstruction_loss(
    model: nn.Module, batch: list[torch.Tensor], *, weight: float
) -> torch.Tensor:
    """Per-record BCE over pixels plus `weight` times the label head's cross-entropy, shape (B,):
    the loss of a `LabelledAutoencoder` on (images, labels) batches."""
    x, y = batch[0], batch[1]
    recon, label_logits = model(x, y)
    return _pixel_bce(recon, x) + weight * F.cross_entropy(label_logits, y, reduction="none")


def new_labelled_autoencoder(factory, num_classes: int) -> LabelledAutoencoder:
    """`factory()`'s autoencoder with a label head (module level: picklable for Ray workers);
    the head's initial weights follow the autoencoder's from the same public seed."""
    return LabelledAutoencoder(factory(), num_classes)


def decoder_classes(cfg: Stage1Config, num_classes: int) -> int:
    """How many classes the decoder reads as a one-hot input: `num_classes` with
    `stage1.conditional_decoder`, else 0 (the latent alone)."""
    return num_classes if cfg.conditional_decoder else 0


def build_autoencoder(
    cfg: Stage1Config,
    *,
    channels: int = 1,
    image_size: int = 28,
    num_classes: int = 0,
    latent_noise_std: float = 0.0,
) -> LatentAutoencoder:
    """The configured autoencoder (`stage1.latent`), with whatever weights torch draws now;
    `num_classes` matters only with `stage1.conditional_decoder`; `latent_noise_std`: the
    decoder's training noise (`LatentAutoencoder.latent_noise_std`)."""
    shape = {
        "channels": channels,
        "image_size": image_size,
        "label_classes": decoder_classes(cfg, num_classes),
    }
    if cfg.latent == "spatial":
        model: LatentAutoencoder = SpatialAutoencoder(cfg.latent_channels, cfg.width, **shape)
    else:
        model = ConvAutoencoder(cfg.latent_dim, cfg.width, **shape)
    model.latent_noise_std = latent_noise_std
    return model


def latent_size(cfg: Stage1Config, image_size: int = 28) -> int:
    """The length of the flat latent vector stage 2 gets."""
    if cfg.latent == "spatial":
        return cfg.latent_channels * (image_size // 4) ** 2
    return cfg.latent_dim


def new_autoencoder(
    cfg: Stage1Config,
    seed: int,
    *,
    channels: int = 1,
    image_size: int = 28,
    num_classes: int = 0,
    latent_noise_std: float = 0.0,
) -> LatentAutoencoder:
    """The initial weights from `seed`: the same on every Ray worker and in-process."""
    torch.manual_seed(seed)
    return build_autoencoder(
        cfg,
        channels=channels,
        image_size=image_size,
        num_classes=num_classes,
        latent_noise_std=latent_noise_std,
    )


def train_autoencoder(
    images: np.ndarray,
    cfg: Stage1Config,
    plan: DPSGDPlan,
    session: PrivacySession,
    *,
    device: str,
    seed: int,
    key: MechanismKey,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> LatentAutoencoder:
    """`seed`: the public initial weights; `key`: the DP-SGD segment's secret randomness."""
    channels = 1 if images.ndim == 3 else images.shape[1]  # the public shape, not pixels
    model = new_autoencoder(cfg, seed, channels=channels, image_size=images.shape[-1])
    train_dpsgd(
        model,
        [images_to_tensor(images)],
        reconstruction_loss,
        plan,
        session,
        lr=cfg.lr,
        key=key,
        device=device,
        on_step=on_step,
        progress=progress,
        grad_sample_mode=cfg.grad_sample_mode,
        physical_batch_size=cfg.physical_batch_size,
    )
    return model


@torch.no_grad()
def encode(
    model: LatentAutoencoder, images: np.ndarray, device: str, batch: int = 2048
) -> np.ndarray:
    model.eval().to(device)
    out = [
        model.encode(images_to_tensor(images[i : i + batch]).to(device)).cpu()
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def decode(
    model: LatentAutoencoder,
    latents: np.ndarray,
    device: str,
    batch: int = 2048,
    labels: np.ndarray | None = None,
    sharpen: float = 0.0,
) -> np.ndarray:
    """Latents (and, for a label-conditioned decoder, their labels) -> uint8 images, (N, H, W)
    grey or (N, C, H, W) colour, of the model's shape, unsharp-masked by ``sharpen``
    (`stage2.sharpen`) before they are rounded. Pure post-processing of DP outputs."""
    model.eval().to(device)
    out = []
    for i in range(0, len(latents), batch):
        z = torch.from_numpy(np.ascontiguousarray(latents[i : i + batch])).float().to(device)
        y = None if labels is None else torch.as_tensor(labels[i : i + batch], device=device)
        out.append(unsharp_mask(model.decode(z, y), sharpen).cpu())
    return tensor_to_images(torch.cat(out))
