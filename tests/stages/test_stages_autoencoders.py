"""The stage-1 autoencoders' shapes and latent range: vector and spatial latents, grey and RGB,
28 and 32 pixels; the config picks the shape and stage 2 always gets a flat vector in [-1, 1]."""

from __future__ import annotations

import pytest
import torch

from tdpdm.config import Stage1Config
from tdpdm.models.autoencoder import ConvAutoencoder, SpatialAutoencoder
from tdpdm.stages.encode import build_autoencoder, latent_size, new_autoencoder


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 16)])
@pytest.mark.parametrize("kind", ["vector", "spatial"])
@torch.no_grad()
def test_shapes_and_range(kind: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    if kind == "spatial":
        model = SpatialAutoencoder(3, width=8, channels=channels, image_size=size)
        d = 3 * (size // 4) ** 2
    else:
        model = ConvAutoencoder(12, width=8, channels=channels, image_size=size)
        d = 12
    assert model.latent_dim == d
    x = torch.rand(5, channels, size, size)
    x[0] = 0.0
    x[1] = 1.0
    z = model.encode(x * 50.0)  # far outside the data range: tanh still bounds it
    assert z.shape == (5, d)
    assert float(z.abs().max()) <= 1.0
    assert model(x).shape == x.shape
    out = model.decode(torch.empty(4, d).uniform_(-1, 1))
    assert out.shape == (4, channels, size, size)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("size", [0, 2, 30])
def test_image_size_must_be_a_multiple_of_four(size: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        SpatialAutoencoder(image_size=size)
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvAutoencoder(image_size=size)


def test_config_picks_the_latent() -> None:
    vector = Stage1Config(width=8)
    spatial = Stage1Config(latent="spatial", latent_channels=2, width=8)
    assert isinstance(build_autoencoder(vector), ConvAutoencoder)
    assert build_autoencoder(vector).latent_dim == latent_size(vector) == 32
    model = build_autoencoder(spatial)
    assert isinstance(model, SpatialAutoencoder)
    assert model.latent_dim == latent_size(spatial) == 98
    # the public initial weights follow the seed, as for the vector latent
    a, b = new_autoencoder(spatial, 3), new_autoencoder(spatial, 3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_vector_checkpoint_layout_is_unchanged() -> None:
    """Saved vector-latent weights (older runs) still load: the module indices are as before."""
    keys = set(ConvAutoencoder(32, 32).state_dict())
    expected = {"encoder.3.weight", "decoder.0.weight", "decoder.4.0.weight", "decoder.6.weight"}
    assert expected <= keys
