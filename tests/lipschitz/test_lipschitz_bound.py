"""The encoder's Lipschitz bound is exact, holds on data, and the check catches its absence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tdpdm.models.lipschitz_vae import LipschitzVAE, MaxMin
from tdpdm.stages.encode import images_to_tensor
from tdpdm.stages.lipschitz_release import (
    DESIGN_BOUND,
    LipschitzCheckError,
    check_lipschitz,
)


def _train(model: LipschitzVAE, x: torch.Tensor, steps: int = 40) -> LipschitzVAE:
    """Plain (non-DP) Adam with the model's projection after each step, as in training."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.project_weights()
    return model


def test_projection_gives_exact_unit_spectral_norms() -> None:
    torch.manual_seed(0)
    model = LipschitzVAE(latent_dim=8, hidden=64)
    with torch.no_grad():
        for layer in model.lipschitz_layers():
            layer.weight.mul_(7.0)
    model.project_weights()
    for layer in model.lipschitz_layers():
        top = torch.linalg.svdvals(layer.weight.double())[0].item()
        assert top <= 1.0
        assert top == pytest.approx(1.0, abs=1e-5)
    assert model.lipschitz_bound() <= DESIGN_BOUND


def test_maxmin_is_norm_preserving() -> None:
    x = torch.randn(100, 64, dtype=torch.float64)
    y = torch.randn(100, 64, dtype=torch.float64)
    act = MaxMin()
    assert torch.allclose(act(x).norm(dim=1), x.norm(dim=1))
    assert ((act(x) - act(y)).norm(dim=1) <= (x - y).norm(dim=1) + 1e-12).all()


def test_bound_holds_on_data_with_normalisation(mnist_small) -> None:
    x = images_to_tensor(mnist_small[0][:256])
    model = _train(LipschitzVAE(latent_dim=8, hidden=128), x)
    bound = model.lipschitz_bound()
    assert bound <= DESIGN_BOUND * (1 + 1e-9)
    result = check_lipschitz(model.encoder_mean, x, bound, pairs=2048, local_points=64)
    assert 0 < result.max_ratio <= bound
    # MaxMin keeps the trained encoder close to its bound: the check is not vacuous.
    assert result.max_ratio_local > 0.5 * bound


def test_check_fails_without_spectral_normalisation(mnist_small) -> None:
    x = images_to_tensor(mnist_small[0][:256])
    model = _train(LipschitzVAE(latent_dim=8, hidden=128, normalise=False), x)
    assert model.lipschitz_bound() > DESIGN_BOUND
    with pytest.raises(LipschitzCheckError, match="exceeds the bound"):
        check_lipschitz(model.encoder_mean, x, DESIGN_BOUND, pairs=2048, local_points=64)


def test_check_catches_a_forward_that_breaks_its_computed_bound(mnist_small) -> None:
    """An encoder whose forward does more than its layers (here a data-dependent rescaling, like
    a normalisation layer) exceeds the product of norms, and the check says so."""
    x = images_to_tensor(mnist_small[0][:256])
    model = _train(LipschitzVAE(latent_dim=8, hidden=128), x)

    class PerRecordNormalised(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z / z.norm(dim=1, keepdim=True).clamp_min(1e-3) * 5.0

    broken = nn.Sequential(model.encoder_mean, PerRecordNormalised())
    with pytest.raises(LipschitzCheckError):
        check_lipschitz(broken, x, model.lipschitz_bound(), pairs=2048, local_points=64)


def test_bound_is_product_of_exact_layer_norms() -> None:
    torch.manual_seed(1)
    model = LipschitzVAE(latent_dim=4, hidden=32, normalise=False)
    with torch.no_grad():
        for k, layer in enumerate(model.lipschitz_layers()):
            layer.weight.mul_(1.5 + k)
    expected = np.prod(
        [
            np.linalg.svd(layer.weight.detach().double().numpy(), compute_uv=False)[0]
            for layer in model.lipschitz_layers()
        ]
    )
    assert model.lipschitz_bound() == pytest.approx(expected, rel=1e-12)
