"""Sampling: latents from the diffusion model, images from the decoder. All post-processing
of DP outputs; synthetic labels are balanced over classes (no data-dependent proportions)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from tdpdm.models.ambient import AmbientDenoiser
from tdpdm.models.autoencoder import LatentAutoencoder
from tdpdm.models.diffusion import LatentDenoiser, ddim_sample
from tdpdm.stages.deconvolve import LatentMixture
from tdpdm.stages.encode import decode


def balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    labels = np.arange(n) % num_classes
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


def generate(
    denoiser: LatentDenoiser | LatentMixture | AmbientDenoiser,
    autoencoder: LatentAutoencoder,
    n: int,
    *,
    num_classes: int,
    steps: int,
    guidance: float,
    seed: int,
    device: str,
    batch: int = 2000,
    progress: bool = True,
    sharpen: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, H, W) grey or (n, C, H, W), labels int64 (n,)) from a denoiser, a
    mixture, or (`released` mode) an ambient denoiser that stops at its release's noise;
    decoded images unsharp-masked by ``sharpen`` (`stage2.sharpen`)."""
    labels = balanced_labels(n, num_classes, seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    denoiser.eval().to(device)
    chunks = []
    for i in tqdm(range(0, n, batch), desc="sampling", disable=not progress, unit="batch"):
        y = torch.from_numpy(labels[i : i + batch]).to(device)
        if isinstance(denoiser, LatentMixture):
            z = denoiser.sample(y, generator=generator)
        elif isinstance(denoiser, AmbientDenoiser):
            z = denoiser.sample(y, steps=steps, guidance=guidance, generator=generator)
        else:
            z = ddim_sample(denoiser, y, steps=steps, guidance=guidance, generator=generator)
        chunks.append(z.float().cpu().numpy())
    latents = np.concatenate(chunks)
    return decode(autoencoder, latents, device, labels=labels, sharpen=sharpen), labels
