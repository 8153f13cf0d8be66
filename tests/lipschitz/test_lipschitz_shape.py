"""Issue 15: the Lipschitz release on an RGB shape. Its sensitivity is that of the input set
[0, 1]^(C*H*W), computed from the configured shape (sqrt(3*32*32) for RGB 32x32), never from
the pixels; the release's real noise has the std that sensitivity calls for."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tdpdm.config import load_config
from tdpdm.models.lipschitz_vae import LipschitzVAE, input_diameter
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.ledger import Ledger
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages.encode import images_to_tensor
from tdpdm.stages.lipschitz_release import (
    CLEAN_TRAINING_NOISE,
    label_length,
    new_lipschitz_vae,
    release,
    training_noise_std,
)
from tdpdm.stages.plan import LIPSCHITZ_RELEASE

LABEL_SCALE = 0.6
RGB32 = math.sqrt(3 * 32 * 32)


def independent_sensitivity(model: LipschitzVAE, diameter: float) -> float:
    """sqrt((D L)^2 + 2 b^2) from numpy's SVD and the label length's definition."""
    lip = np.prod(
        [
            np.linalg.svd(layer.weight.detach().double().numpy(), compute_uv=False)[0]
            for layer in model.lipschitz_layers()
        ]
    )
    b = LABEL_SCALE / math.sqrt(1 - LABEL_SCALE**2) * diameter / math.sqrt(2.0)
    return math.sqrt((diameter * lip) ** 2 + 2 * b**2)


def test_input_diameter_is_that_of_the_unit_cube_of_the_shape() -> None:
    assert input_diameter(1, 28) == pytest.approx(28.0)
    assert input_diameter(3, 32) == pytest.approx(RGB32)
    # the two corners of [0, 1]^(3x32x32) are exactly that far apart
    corners = torch.zeros(3, 32, 32), torch.ones(3, 32, 32)
    assert float((corners[1] - corners[0]).norm()) == pytest.approx(RGB32)
    with pytest.raises(ValueError):
        input_diameter(0, 32)


def test_model_and_noise_follow_the_configured_shape(tmp_path) -> None:
    """The config's shape alone fixes the model and the training noise: no data is opened."""
    base = {
        "mode": "released",
        "stage1.mechanism": "lipschitz-vae",
        "stage1.vae_hidden": 32,
        "stage1.vae_training_noise": "release",
    }
    grey = load_config(None, base)
    rgb = grey.replace(dataset="rgb-set", data=str(tmp_path / "none"), channels=3, image_size=32)
    model = new_lipschitz_vae(rgb)
    assert (model.channels, model.image_size) == (3, 32)
    assert model.input_diameter == pytest.approx(RGB32)
    assert model.lipschitz_layers()[0].in_features == 3 * 32 * 32
    assert model.decode(torch.zeros(2, model.latent_dim)).shape == (2, 3, 32, 32)
    event = GaussianEvent(noise_multiplier=1.5, stage=LIPSCHITZ_RELEASE)
    # the std scales with the diameter: sqrt(3072) / 28 times the grey 28x28 one
    ratio = training_noise_std(rgb, event) / training_noise_std(grey, event)
    assert ratio == pytest.approx(RGB32 / 28.0)


def test_rgb_release_sensitivity_and_noise_come_from_the_shape(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(200, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 3, size=200)
    torch.manual_seed(0)
    model = LipschitzVAE(latent_dim=8, hidden=32, channels=3, image_size=32)
    event = GaussianEvent(noise_multiplier=2.0, stage=LIPSCHITZ_RELEASE)
    ledger = Ledger(str(tmp_path / "ledger.json"))
    ledger.set_budget("rgb", 100.0, 1e-5, "replace_one")
    session = PrivacySession.begin(ledger, "rgb", "shape-test", [event])
    out = release(
        model,
        images,
        labels,
        num_classes=3,
        label_scale=LABEL_SCALE,
        event=event,
        session=session,
        seed=1,
        key=MechanismKey("lipschitz-release", 5),
    )
    assert session.recorded == [event]
    assert out.input_diameter == pytest.approx(RGB32)
    assert out.info()["input_diameter"] == pytest.approx(RGB32)
    assert out.label_length == pytest.approx(label_length(LABEL_SCALE, RGB32))
    assert out.sensitivity == pytest.approx(independent_sensitivity(model, RGB32), rel=1e-9)
    assert out.noise_std == pytest.approx(2.0 * out.sensitivity / 2.0)
    # the noise really added has that std (on mu's scale: latents times R = D / 2)
    clean = model.encode(images_to_tensor(images)).detach().double().numpy()
    noise = (out.latents - clean) * (RGB32 / 2)
    assert noise.std() == pytest.approx(out.noise_std, rel=0.08)


def test_images_of_another_shape_are_refused_before_the_release(tmp_path) -> None:
    model = LipschitzVAE(latent_dim=4, hidden=16, channels=3, image_size=32)
    event = GaussianEvent(noise_multiplier=2.0, stage=LIPSCHITZ_RELEASE)
    ledger = Ledger(str(tmp_path / "ledger.json"))
    ledger.set_budget("rgb", 100.0, 1e-5, "replace_one")
    session = PrivacySession.begin(ledger, "rgb", "shape-test", [event])
    grey = np.zeros((10, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match="another shape"):
        release(
            model,
            grey,
            np.zeros(10, dtype=np.int64),
            num_classes=3,
            label_scale=LABEL_SCALE,
            event=event,
            session=session,
            seed=1,
            key=MechanismKey("lipschitz-release", 5),
        )
    assert session.recorded == []


def test_the_decoder_learns_clean_latents_when_stage2_samples_clean_ones() -> None:
    """The deconvolved mixture samples clean latents: the VAE then trains at a small posterior
    std, not at the release's (a decoder trained on release-sized noise decodes every clean
    latent to the mean image). A diffusion model on the noisy release keeps the release's."""
    base = {"mode": "released", "stage1.mechanism": "lipschitz-vae", "stage1.vae_hidden": 32}
    event = GaussianEvent(noise_multiplier=1.5, stage=LIPSCHITZ_RELEASE)
    deconvolved = load_config(None, base)
    diffusion = load_config(None, base | {"stage2.released_model": "diffusion"})
    explicit = load_config(None, base | {"stage1.vae_training_noise": 2.5})
    release_level = load_config(None, base | {"stage1.vae_training_noise": "release"})
    assert training_noise_std(deconvolved, event) == CLEAN_TRAINING_NOISE
    assert training_noise_std(explicit, event) == 2.5
    assert training_noise_std(diffusion, event) == training_noise_std(release_level, event)
    assert training_noise_std(release_level, event) > 10 * CLEAN_TRAINING_NOISE
    with pytest.raises(ValueError, match="vae_training_noise"):
        load_config(None, base | {"stage1.vae_training_noise": "loud"})
