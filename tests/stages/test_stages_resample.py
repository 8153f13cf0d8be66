"""`tdpdm.stages.resample`: a saved stage-2 model is rebuilt from its weights' own shapes (a
Tune search may have chosen another width or depth than the config's), so that `tdpdm sample`
needs nothing but the release."""

from __future__ import annotations

from pathlib import Path

import torch

from tdpdm.models.diffusion import LatentDenoiser
from tdpdm.stages.artifacts import save_model
from tdpdm.stages.deconvolve import LatentMixture
from tdpdm.stages.resample import load_stage2


def test_denoiser_shape_comes_from_its_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = LatentDenoiser(latent_dim=12, num_classes=7, hidden=48, depth=3)
    save_model(saved, str(tmp_path / "diffusion.pt"))
    loaded = load_stage2(str(tmp_path / "diffusion.pt"))
    assert isinstance(loaded, LatentDenoiser)
    assert (loaded.latent_dim, loaded.num_classes, loaded.hidden) == (12, 7, 48)
    assert len(loaded.blocks) == 3
    for key, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_mixture_shape_comes_from_its_weights(tmp_path: Path) -> None:
    saved = LatentMixture(components=6, latent_dim=5, num_classes=3)
    saved.means.normal_()
    save_model(saved, str(tmp_path / "mixture.pt"))
    loaded = load_stage2(str(tmp_path / "mixture.pt"))
    assert isinstance(loaded, LatentMixture)
    assert (loaded.latent_dim, loaded.num_classes, loaded.means.shape[0]) == (5, 3, 6)
    assert torch.equal(loaded.means, saved.means)
