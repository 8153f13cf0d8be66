"""`stage2.sharpen`: decoded samples are unsharp-masked (models/sharpen.py) by the run's sampler
and by a later `tdpdm sample` alike; the filter reads each sample alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdpdm.config import ConfigError, RunConfig, Stage1Config
from tdpdm.models.sharpen import unsharp_mask
from tdpdm.stages.deconvolve import LatentMixture
from tdpdm.stages.encode import build_autoencoder, decode, tensor_to_images
from tdpdm.stages.resample import PublishedRun
from tdpdm.stages.sample import generate


def _step_edge(channels: int = 1) -> torch.Tensor:
    image = torch.full((1, channels, 12, 12), 0.3)
    image[..., 6:] = 0.7
    return image


def test_zero_is_the_identity_and_a_flat_image_stays_flat() -> None:
    image = torch.rand(2, 1, 10, 10)
    assert unsharp_mask(image, 0.0) is image
    flat = torch.full((3, 1, 9, 9), 0.4)
    assert torch.allclose(unsharp_mask(flat, 3.0), flat)


def test_an_edge_gains_contrast_and_stays_in_range() -> None:
    image = _step_edge()
    sharp = unsharp_mask(image, 2.0)
    row_before, row_after = image[0, 0, 6], sharp[0, 0, 6]
    assert sharp[0, 0, 6, 5] < image[0, 0, 6, 5]  # the dark side darker at the edge
    assert sharp[0, 0, 6, 6] > image[0, 0, 6, 6]  # the bright side brighter
    assert torch.allclose(row_after[:2], row_before[:2])  # far from the edge: unchanged
    assert torch.allclose(row_after[-2:], row_before[-2:])
    strong = unsharp_mask(image, 50.0)
    assert strong.min() == 0.0 and strong.max() == 1.0  # clamped, as pixels must be


def test_channels_are_filtered_on_their_own() -> None:
    image = _step_edge(channels=3)
    image[:, 1] = 0.5  # one flat channel beside two with an edge
    sharp = unsharp_mask(image, 2.0)
    assert torch.allclose(sharp[:, 1], image[:, 1])
    assert torch.allclose(sharp[:, 0], unsharp_mask(image[:, :1], 2.0)[:, 0])


def test_a_negative_amount_is_refused() -> None:
    with pytest.raises(ValueError, match="sharpening amount"):
        unsharp_mask(torch.zeros(1, 1, 4, 4), -0.5)
    with pytest.raises(ConfigError, match="sharpen"):
        RunConfig().replace(stage2={"sharpen": -1.0})


def _tiny_stage2() -> LatentMixture:
    torch.manual_seed(0)
    mixture = LatentMixture(components=10, latent_dim=32, num_classes=10)
    mixture.means.uniform_(-0.8, 0.8)
    mixture.scale_tril.mul_(0.2)
    mixture.class_shares.copy_(torch.eye(10))
    return mixture


def test_sampling_sharpens_before_rounding_and_a_later_draw_matches() -> None:
    decoder = build_autoencoder(Stage1Config(), num_classes=10)
    mixture = _tiny_stage2()
    common = {"num_classes": 10, "steps": 1, "guidance": 1.0, "seed": 4, "device": "cpu"}
    plain, labels = generate(mixture, decoder, 30, progress=False, **common)
    sharp, sharp_labels = generate(mixture, decoder, 30, progress=False, sharpen=2.0, **common)
    assert np.array_equal(labels, sharp_labels)  # the filter changes pixels, nothing else
    assert not np.array_equal(plain, sharp)
    latents = mixture.sample(torch.from_numpy(labels), torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = tensor_to_images(unsharp_mask(decoder.decode(latents), 2.0))
    assert np.array_equal(sharp, expected)
    assert np.array_equal(decode(decoder, latents.numpy(), "cpu", sharpen=2.0), expected)

    def published(amount: float) -> PublishedRun:
        cfg = RunConfig(stage2={"sharpen": amount})
        return PublishedRun("", {}, cfg, decoder, mixture, [str(c) for c in range(10)])

    assert np.array_equal(published(2.0).sample(30, seed=4)[0], sharp)  # `tdpdm sample` too
    assert np.array_equal(published(0.0).sample(30, seed=4)[0], plain)
