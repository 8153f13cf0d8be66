"""The recorded epsilon of the Lipschitz release equals an independent Gaussian-mechanism
computation: the analytic Gaussian mechanism of Balle & Wang (2018, Theorem 8) for the release
alone, and a hand-built dp-accounting PLD for the whole plan (DP-SGD + release)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dp_accounting.pld import privacy_loss_distribution as pld

from tdpdm.config import load_config
from tdpdm.models.lipschitz_vae import LATENT_RADIUS, LipschitzVAE
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.ledger import Ledger
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.stages.encode import images_to_tensor
from tdpdm.stages.lipschitz_release import release, release_std
from tdpdm.stages.plan import LIPSCHITZ_RELEASE, LIPSCHITZ_VAE, plan_run

DELTA = 1e-5
LABEL_SCALE = 0.6


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def analytic_gaussian_epsilon(sensitivity: float, std: float, delta: float) -> float:
    """Smallest epsilon with delta(epsilon) <= delta for N(f(D), std^2 I), ||f(D)-f(D')|| <=
    sensitivity: delta(eps) = Phi(D/2s - eps s/D) - e^eps Phi(-D/2s - eps s/D)."""

    def delta_at(eps: float) -> float:
        a, b = sensitivity / (2 * std), eps * std / sensitivity
        return _phi(a - b) - math.exp(eps) * _phi(-a - b)

    low, high = 0.0, 1.0
    while delta_at(high) > delta:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (low, mid) if delta_at(mid) <= delta else (mid, high)
    return high


def independent_sensitivity(model: LipschitzVAE) -> float:
    """sqrt((28 L)^2 + 2 b^2) from numpy's SVD and the label length's definition."""
    lip = np.prod(
        [
            np.linalg.svd(layer.weight.detach().double().numpy(), compute_uv=False)[0]
            for layer in model.lipschitz_layers()
        ]
    )
    b = LABEL_SCALE / math.sqrt(1 - LABEL_SCALE**2) * 28.0 / math.sqrt(2.0)
    return math.sqrt((28.0 * lip) ** 2 + 2 * b**2)


def _session(tmp_path, events) -> PrivacySession:
    ledger = Ledger(str(tmp_path / "ledger.json"))
    ledger.set_budget("mnist", 100.0, DELTA, "replace_one")
    return PrivacySession.begin(ledger, "mnist", "lipschitz-test", events)


@pytest.mark.parametrize("multiplier", [0.8, 2.5])
def test_release_epsilon_equals_analytic_gaussian(tmp_path, mnist_small, multiplier) -> None:
    images, labels = mnist_small
    torch.manual_seed(0)
    model = LipschitzVAE(latent_dim=8, hidden=64)
    event = GaussianEvent(noise_multiplier=multiplier, stage=LIPSCHITZ_RELEASE)
    session = _session(tmp_path, [event])
    out = release(
        model,
        images,
        labels,
        num_classes=10,
        label_scale=LABEL_SCALE,
        event=event,
        session=session,
        seed=3,
        key=MechanismKey("lipschitz-release", 3),
    )
    assert session.recorded == [event]
    sensitivity = independent_sensitivity(model)
    assert out.sensitivity == pytest.approx(sensitivity, rel=1e-9)

    # The noise that was really added has the std the accounting assumes.
    clean = model.encode(images_to_tensor(images)).detach().double().numpy()
    latent_noise = (out.latents - clean) * LATENT_RADIUS
    label_noise = out.label_vectors * out.label_length - out.label_length * np.eye(10)[labels]
    noise = np.concatenate([latent_noise.ravel(), label_noise.ravel()])
    assert abs(noise.mean()) < 0.05 * out.noise_std
    assert noise.std() == pytest.approx(out.noise_std, rel=0.04)

    recorded = compute_epsilon(session.recorded, DELTA, Adjacency.REPLACE_ONE).epsilon
    analytic = analytic_gaussian_epsilon(sensitivity, out.noise_std, DELTA)
    # The PLD accountant is pessimistic: never below the exact value, and within 0.5 %.
    assert recorded >= analytic * (1 - 1e-6)
    assert recorded == pytest.approx(analytic, rel=5e-3)


def test_whole_plan_epsilon_equals_independent_pld(data_root) -> None:
    cfg = load_config(
        None,
        {
            "mode": "released",
            "stage1.mechanism": "lipschitz-vae",
            "epsilon": 4.0,
            "stage1.epochs": 2,
            "stage1.batch_size": 128,
            "data_dir": str(data_root),
        },
    )
    plan = plan_run(cfg, 2000, Adjacency.REPLACE_ONE, DELTA)
    enc, rel = plan.events()
    assert enc.stage == LIPSCHITZ_VAE and rel.stage == LIPSCHITZ_RELEASE
    ours = compute_epsilon(plan.events(), DELTA, Adjacency.REPLACE_ONE).epsilon
    assert ours <= cfg.epsilon

    # Independently: the release as a Gaussian of sensitivity Delta (design bound L = 1) and
    # the std it adds; DP-SGD as Poisson-subsampled Gaussian steps under replace-one.
    b = LABEL_SCALE / math.sqrt(1 - LABEL_SCALE**2) * 28.0 / math.sqrt(2.0)
    sensitivity = math.sqrt(28.0**2 + 2 * b**2)
    std = release_std(rel, 1.0, LABEL_SCALE)
    release_pld = pld.from_gaussian_mechanism(
        standard_deviation=std, sensitivity=sensitivity, value_discretization_interval=1e-4
    )
    dpsgd_pld = pld.from_gaussian_mechanism(
        standard_deviation=enc.noise_multiplier,
        sampling_prob=enc.sampling_rate,
        neighboring_relation=pld.NeighborRel.REPLACE_ONE,
        value_discretization_interval=1e-4,
    ).self_compose(enc.steps)
    independent = release_pld.compose(dpsgd_pld).get_epsilon_for_delta(DELTA)
    assert ours == pytest.approx(independent, rel=5e-3)
