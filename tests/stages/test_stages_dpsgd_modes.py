"""Ghost clipping must be the same mechanism as materialised per-sample gradients.

With the noise switched off (noise multiplier 0, a test-only setting: the planner never makes
one) one DP-SGD step from identical weights on an identical Poisson batch must move the weights
identically in both modes, for both stage models; otherwise `ghost` would clip differently and
the accounted sensitivity would not hold.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tdpdm.models.autoencoder import ConvAutoencoder
from tdpdm.models.diffusion import LatentDenoiser, diffusion_loss
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dpsgd import DPSGDPlan, train_dpsgd
from tdpdm.stages.encode import reconstruction_loss


class Collect:
    def __init__(self) -> None:
        self.events: list[object] = []

    def record(self, event: object) -> None:
        self.events.append(event)


def _denoiser_loss(model, batch):
    torch.manual_seed(123)  # same timesteps, noise and label dropout in both modes
    return diffusion_loss(model, batch[0], batch[1], noise_draws=3, label_dropout=0.2)


def _ae_loss(model, batch):
    return reconstruction_loss(model, batch)


CASES = {
    "denoiser": (
        lambda: LatentDenoiser(8, 10, hidden=32, depth=2),
        lambda n: [torch.rand(n, 8) * 2 - 1, torch.randint(0, 10, (n,))],
        _denoiser_loss,
    ),
    "autoencoder": (
        lambda: ConvAutoencoder(latent_dim=4, width=8),
        lambda n: [torch.rand(n, 1, 28, 28)],
        _ae_loss,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ghost_and_hooks_apply_the_same_clipped_update(name: str) -> None:
    make_model, make_data, loss_fn = CASES[name]
    torch.manual_seed(0)
    start = make_model()
    data = make_data(64)
    # A small clipping norm so that clipping is active for most records.
    plan = DPSGDPlan("test", 1.0, 0.5, 1, max_grad_norm=0.05, expected_batch_size=32)
    plan = DPSGDPlan(plan.stage, 1e-12, plan.sampling_rate, 1, 0.05, 32)
    moved = {}
    for mode in ("hooks", "ghost"):
        model = copy.deepcopy(start)
        session = Collect()
        # Plain SGD at lr 1: the update is exactly (clipped sum + noise) / expected batch size,
        # so any difference in clipping shows (Adam's sign-like first step would hide it).
        train_dpsgd(
            model,
            data,
            loss_fn,
            plan,
            session,
            lr=1.0,
            key=MechanismKey("test", 7),  # the same Poisson batch in both modes
            device="cpu",
            progress=False,
            grad_sample_mode=mode,
            make_optimizer=torch.optim.SGD,
        )
        assert len(session.events) == 1 and session.events[0].steps == 1
        moved[mode] = torch.cat(
            [(p - q).flatten() for p, q in zip(model.parameters(), start.parameters(), strict=True)]
        )
    assert moved["hooks"].abs().max() > 0
    # Clipping really is active: every record contributes at most C / B to the update norm.
    assert moved["hooks"].norm() <= 64 * 0.05 / 32 + 1e-6
    torch.testing.assert_close(moved["ghost"], moved["hooks"], rtol=1e-4, atol=1e-7)
