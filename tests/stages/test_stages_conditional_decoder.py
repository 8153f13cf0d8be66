"""`stage1.conditional_decoder`: the decoder reads the one-hot label beside the latent (issue 14:
a per-record release drowns the latents' class signal, so the class must come from the DP
decoder). The labels ride in the DP-SGD batches that already carry the images, the saved
decoder is rebuilt with its label inputs wherever a run's release is read again, and a decoder
without them is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tdpdm_test_support import tiny_run_overrides

from tdpdm.config import Stage1Config, load_config
from tdpdm.models.autoencoder import ConvAutoencoder, SpatialAutoencoder
from tdpdm.models.lipschitz_vae import LipschitzVAE
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.stages.encode import build_autoencoder, decode
from tdpdm.stages.plan import plan_run
from tdpdm.stages.stage1_mechanisms import STAGE1_MECHANISMS


def _conditioned_models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [
        ConvAutoencoder(latent_dim=4, width=8, label_classes=3),
        SpatialAutoencoder(latent_channels=2, width=8, label_classes=3),
        LipschitzVAE(latent_dim=4, hidden=16, label_classes=3),
    ]


@pytest.mark.parametrize("model", _conditioned_models(), ids=["vector", "spatial", "lipschitz"])
def test_one_latent_decodes_to_a_different_image_per_label_and_needs_a_label(model):
    z = torch.rand(1, model.latent_dim).repeat(3, 1) * 2 - 1
    images = model.decode(z, torch.tensor([0, 1, 2]))
    assert images.shape == (3, 1, 28, 28)
    assert not torch.allclose(images[0], images[1]) and not torch.allclose(images[1], images[2])
    with pytest.raises(ValueError, match="conditional_decoder"):
        model.decode(z)


def test_a_decoder_without_labels_keeps_its_weights_layout():
    """Runs saved before the option load as before: same keys, same shapes."""
    plain = SpatialAutoencoder(latent_channels=2, width=8).state_dict()
    conditioned = SpatialAutoencoder(latent_channels=2, width=8, label_classes=3).state_dict()
    assert plain.keys() == conditioned.keys()
    assert plain["decoder.1.0.weight"].shape[1] == 2
    assert conditioned["decoder.1.0.weight"].shape[1] == 2 + 3  # one constant map per class
    assert ConvAutoencoder(latent_dim=4, width=8).decoder[0].in_features == 4


@pytest.mark.parametrize("mechanism", ["dpsgd-autoencoder", "lipschitz-vae"])
def test_the_labels_join_the_dpsgd_batch_and_train_the_decoders_label_inputs(mechanism):
    cfg = load_config(
        None,
        {
            "mode": "released",
            "stage1.mechanism": mechanism,
            "stage1.latent_dim": 4,
            "stage1.width": 8,
            "stage1.vae_hidden": 16,
            "stage1.conditional_decoder": True,
        },
    )
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5])
    plan = plan_run(cfg, 5000, Adjacency.REPLACE_ONE, 1e-5)
    inputs = STAGE1_MECHANISMS[mechanism].training_inputs(cfg, plan, images, labels, 10)
    assert len(inputs.tensors) == 2 and inputs.tensors[1].tolist() == labels.tolist()
    model = inputs.factory()
    loss = inputs.loss_fn(model, inputs.tensors)
    assert loss.shape == (6,)
    loss.sum().backward()
    first = next(m for m in model.decoder if isinstance(m, torch.nn.Linear))
    label_columns = first.weight.grad[:, -10:]
    assert label_columns[:, :6].abs().sum() > 0  # the labels present in the batch
    assert label_columns[:, 6:].abs().sum() == 0  # classes absent from it get no gradient


def test_the_decode_helper_passes_the_labels_through():
    torch.manual_seed(0)
    model = build_autoencoder(
        Stage1Config(latent_dim=4, width=8, conditional_decoder=True), num_classes=10
    )
    z = np.zeros((2, 4), dtype=np.float32)
    two = decode(model, z, "cpu", labels=np.array([3, 7]))
    assert two.shape == (2, 28, 28) and not np.array_equal(two[0], two[1])


@pytest.mark.slow
def test_a_released_run_with_a_conditional_decoder_samples_again_from_its_release(
    tmp_path, shared_datasets
):
    from tdpdm.pipeline import run_pipeline
    from tdpdm.stages.resample import PublishedRun

    overrides = tiny_run_overrides(
        tmp_path,
        shared_datasets,
        "released",
        subset=600,
        seed=0,
        settings={"stage1.conditional_decoder": True, "evaluation.synthetic_count": 100},
    )
    cfg = load_config(None, overrides)
    report = run_pipeline(cfg, log=lambda m: None).report
    assert [e["stage"] for e in report["privacy"]["events"]] == ["encoder", "latent_release"]
    state = torch.load(
        tmp_path / "out" / "release" / "models" / "autoencoder.pt", weights_only=True
    )
    assert state["decoder.0.weight"].shape[1] == cfg.stage1.latent_dim + 10
    images, labels = PublishedRun.open(str(tmp_path / "out")).sample(20, seed=1)
    assert images.shape == (20, 28, 28) and sorted(set(labels.tolist())) == list(range(10))


def test_the_plot_tells_a_label_conditioned_decoder_apart():
    from tdpdm.report.plots import report_variant

    def variant(**stage1):
        return report_variant({"mode": "released", "config": {"stage1": stage1}})

    assert variant() == "diffusion"
    assert variant(conditional_decoder=True) == (
        "dpsgd-autoencoder, label-conditioned decoder + diffusion"
    )
    assert variant(mechanism="lipschitz-vae", conditional_decoder=True).startswith(
        "lipschitz-vae, label-conditioned decoder"
    )
