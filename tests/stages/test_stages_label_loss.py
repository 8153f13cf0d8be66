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
from tdpdm.stages.encode import (
    build_autoencoder,
    labelled_reconstruction_loss,
    reconstruction_loss,
)


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


def test_only_the_autoencoder_takes_a_label_loss():
    base = {"mode": "released", "stage1.label_objective_weight": 0.5}
    assert load_config(None, base).stage1.label_objective_weight == 0.5
    with pytest.raises(ValueError, match="label_objective_weight"):
        load_config(None, base | {"stage1.mechanism": "lipschitz-vae"})
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
