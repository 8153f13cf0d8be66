"""`stage1.label_objective_weight`: the autoencoder trains with a label head on its latent (classes
pulled apart for a per-record release); the head is a training aid that never reaches a release,
the labels ride in the same clipped, noised DP-SGD batches, and the accounting is unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tdpdm_test_support import tiny_run_overrides

from tdpdm.config import Stage1Config, load_config
from tdpdm.models.autoencoder import LabelledAutoencoder
from tdpdm.models.lipschitz_vae import LabelledLipschitzVAE, LipschitzVAE
from tdpdm.stages.encode import (
    build_autoencoder,
    labelled_reconstruction_loss,
    reconstruction_loss,
)
from tdpdm.stages.lipschitz_release import labelled_vae_loss, vae_loss


def test_the_loss_is_reconstruction_plus_weighted_cross_entropy_per_record():
    torch.manual_seed(0)
    model = LabelledAutoencoder(build_autoencoder(Stage1Config(latent_dim=4, width=8)), 3)
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 1, 0])
    recon, logits = model(x)
    assert recon.shape == x.shape and logits.shape == (5, 3)
    loss = labelled_reconstruction_loss(model, [x, y], weight=0.7)
    plain = reconstruction_loss(model.autoencoder, [x])
    torch.testing.assert_close(loss, plain + 0.7 * F.cross_entropy(logits, y, reduction="none"))
    assert loss.shape == (5,)


def test_the_lipschitz_vae_loss_adds_the_cross_entropy_at_the_pixel_sum_scale():
    torch.manual_seed(0)
    vae = LipschitzVAE(latent_dim=4, hidden=16)
    vae.noise_std.fill_(0.0)  # a deterministic posterior draw, to compare the two losses
    model = LabelledLipschitzVAE(vae, 3)
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 1, 0])
    recon, logits = model(x)
    assert recon.shape == x.shape and logits.shape == (5, 3)
    torch.testing.assert_close(logits, model.label_head(vae.encode(x)))  # the head reads mu / R
    loss = labelled_vae_loss(model, [x, y], weight=0.3)
    expected = vae_loss(vae, [x]) + 0.3 * 784 * F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(loss, expected)


def test_both_mechanisms_take_a_label_loss_and_bad_weights_are_refused():
    base = {"mode": "released", "stage1.label_objective_weight": 0.5}
    assert load_config(None, base).stage1.label_objective_weight == 0.5
    lipschitz = load_config(None, base | {"stage1.mechanism": "lipschitz-vae"})
    assert lipschitz.stage1.label_objective_weight == 0.5
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="label_objective_weight"):
            load_config(None, {"stage1.label_objective_weight": bad})


def test_a_released_run_with_a_label_loss_releases_no_head(tmp_path, shared_datasets):
    from tdpdm.pipeline import run_pipeline

    overrides = tiny_run_overrides(
        tmp_path,
        shared_datasets,
        "released",
        subset=600,
        seed=0,
        settings={"stage1.label_objective_weight": 1.0, "evaluation.synthetic_count": 100},
    )
    cfg = load_config(None, overrides)
    report = run_pipeline(cfg, log=lambda m: None).report
    assert [e["stage"] for e in report["privacy"]["events"]] == ["encoder", "latent_release"]
    assert report["privacy"]["epsilon"] <= cfg.epsilon
    state = torch.load(
        tmp_path / "out" / "release" / "models" / "autoencoder.pt", weights_only=True
    )
    assert state and not any(k.startswith(("label_head", "autoencoder.")) for k in state)
    build_autoencoder(cfg.stage1).load_state_dict(state)  # a plain autoencoder's weights


def test_a_lipschitz_release_with_a_label_loss_keeps_its_bound_and_saves_no_head(
    tmp_path, shared_datasets
):
    from tdpdm.pipeline import run_pipeline
    from tdpdm.stages.lipschitz_release import new_lipschitz_vae

    overrides = tiny_run_overrides(
        tmp_path,
        shared_datasets,
        "released",
        subset=600,
        seed=0,
        settings={
            "stage1.mechanism": "lipschitz-vae",
            "stage1.label_objective_weight": 1.0,
            "evaluation.synthetic_count": 100,
        },
    )
    cfg = load_config(None, overrides)
    report = run_pipeline(cfg, log=lambda m: None).report
    assert [e["stage"] for e in report["privacy"]["events"]] == [
        "lipschitz_vae",
        "lipschitz_release",
    ]
    assert report["privacy"]["epsilon"] <= cfg.epsilon
    state = torch.load(
        tmp_path / "out" / "release" / "models" / "autoencoder.pt", weights_only=True
    )
    assert state and not any(k.startswith(("label_head", "vae.")) for k in state)
    vae = new_lipschitz_vae(cfg)
    vae.load_state_dict(state)  # a plain Lipschitz VAE's weights
    assert vae.lipschitz_bound() <= 1.0 + 1e-6
