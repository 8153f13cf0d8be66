"""`stage1.decoder_latent_noise`: the autoencoder's decoder trains on noised latents (issue 14:
a per-record release's noise hides the class in the latent, so a label-conditioned decoder must
learn to take it from the label). The noise is the release's own on the latent's scale with
`release`, only while training, and never reaches the label head or a decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tdpdm.config import load_config
from tdpdm.models.autoencoder import LabelledAutoencoder, SpatialAutoencoder
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.stages.plan import plan_run
from tdpdm.stages.stage1_mechanisms import STAGE1_MECHANISMS, decoder_latent_noise_std


def _cfg(**overrides):
    return load_config(
        None,
        {
            "mode": "released",
            "stage1.latent_dim": 8,
            "stage1.width": 8,
            "stage1.conditional_decoder": True,
            **overrides,
        },
    )


def test_release_noise_is_the_releases_std_on_the_latent_scale():
    cfg = _cfg(**{"stage1.decoder_latent_noise": "release"})
    plan = plan_run(cfg, 60000, Adjacency.REPLACE_ONE, 1e-5)
    std = decoder_latent_noise_std(cfg, plan)
    # the release adds N(0, (sigma C)^2) to latent_scale * z, latent_scale = C sqrt(1 - s^2)/sqrt(d)
    latent_scale = cfg.release.clip_norm * math.sqrt(1 - cfg.release.label_scale**2) / math.sqrt(8)
    assert std == pytest.approx(plan.release_noise * cfg.release.clip_norm / latent_scale)
    assert std > 1.0  # at epsilon 10 the release's noise is larger than the latent's range
    assert decoder_latent_noise_std(_cfg(), plan) == 0.0
    assert decoder_latent_noise_std(_cfg(**{"stage1.decoder_latent_noise": 0.7}), plan) == 0.7


def test_release_noise_in_private_mode_is_refused():
    cfg = _cfg(mode="private", **{"stage1.decoder_latent_noise": "release"})
    plan = plan_run(_cfg(), 60000, Adjacency.REPLACE_ONE, 1e-5)
    with pytest.raises(ValueError, match="needs mode released"):
        decoder_latent_noise_std(cfg, plan)


def test_the_decoder_reads_noised_latents_only_while_training():
    torch.manual_seed(0)
    model = SpatialAutoencoder(latent_channels=2, width=8, label_classes=3)
    model.latent_noise_std = 2.0
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    model.train()
    assert not torch.allclose(model(x, y), model(x, y))  # fresh noise every pass
    z = model.encode(x)
    assert float((model.training_latent(z) - z).std()) == pytest.approx(2.0, rel=0.2)
    model.eval()
    torch.testing.assert_close(model(x, y), model(x, y))
    torch.testing.assert_close(model.training_latent(z), z)


def test_the_label_head_reads_the_clean_latent():
    torch.manual_seed(0)
    labelled = LabelledAutoencoder(SpatialAutoencoder(latent_channels=2, width=8), 10)
    labelled.autoencoder.latent_noise_std = 5.0
    x = torch.rand(4, 1, 28, 28)
    (recon1, logits1), (recon2, logits2) = labelled(x), labelled(x)
    assert not torch.allclose(recon1, recon2)
    torch.testing.assert_close(logits1, logits2)


def test_the_mechanisms_model_trains_with_the_noise():
    cfg = _cfg(**{"stage1.decoder_latent_noise": "release", "stage1.label_objective_weight": 0.3})
    plan = plan_run(cfg, 60000, Adjacency.REPLACE_ONE, 1e-5)
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    inputs = STAGE1_MECHANISMS["dpsgd-autoencoder"].training_inputs(
        cfg, plan, images, np.arange(6), 10
    )
    model = inputs.factory()
    assert model.autoencoder.latent_noise_std == pytest.approx(decoder_latent_noise_std(cfg, plan))
    saved = STAGE1_MECHANISMS["dpsgd-autoencoder"].trained(model)
    assert set(saved.state_dict()) == set(
        STAGE1_MECHANISMS["dpsgd-autoencoder"].blank(cfg, 10).state_dict()
    )
