"""The `dp-moments` stage-2 model: bounded sensitivity, exact moments without noise, one
recorded release drawn from its secret key, and a real pipeline run with it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dp_moments import (
    MOMENTS_STAGE,
    MomentsPlan,
    gaussians_from_moments,
    moment_features,
    release_moments,
)


class _Tally:
    def __init__(self) -> None:
        self.events: list = []

    def record(self, event) -> None:
        self.events.append(event)


def _latents(n: int = 3000, d: int = 6, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.uniform(-0.6, 0.6, size=(classes, d))
    z = np.tanh(centres[labels] + 0.3 * rng.normal(size=(n, d)))
    return z, labels


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_every_record_vector_has_norm_at_most_one(covariance):
    """The sensitivity the accounting assumes: corners of [-1, 1]^d are the worst case."""
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.choice([-1.0, 1.0], size=(50, 7)), rng.uniform(-3, 3, (50, 7))])
    norms = np.linalg.norm(moment_features(z, covariance), axis=1)
    assert norms.max() <= 1.0 + 1e-12
    assert norms.max() > 0.99  # and the bound is tight (not a loose, wasteful scaling)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_without_noise_the_class_gaussians_are_the_empirical_ones(covariance):
    z, labels = _latents()
    noisy = release_moments(
        z,
        labels,
        num_classes=3,
        covariance=covariance,
        plan=MomentsPlan(1e-12),
        session=_Tally(),
        key=MechanismKey("t", 1),
    )
    means, covs = gaussians_from_moments(noisy, z.shape[1], covariance)
    for c in range(3):
        zc = z[labels == c]
        assert np.allclose(means[c], zc.mean(0), atol=1e-9)
        empirical = np.cov(zc.T, bias=True)
        want = np.diag(np.diag(empirical)) if covariance == "diagonal" else empirical
        assert np.allclose(
            covs[c], np.maximum(want, 0) if covariance == "diagonal" else want, atol=1e-6
        )


def test_one_release_recorded_and_noise_from_the_key():
    z, labels = _latents(300, d=20)  # 3 x 252 noisy entries: the std is estimated to ~2.5 %
    tally = _Tally()
    args = {"num_classes": 3, "covariance": "full", "plan": MomentsPlan(2.0), "session": tally}
    a = release_moments(z, labels, key=MechanismKey("m", 5), **args)
    b = release_moments(z, labels, key=MechanismKey("m", 5), **args)
    c = release_moments(z, labels, key=MechanismKey.fresh("stage2-moments"), **args)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert tally.events == [GaussianEvent(2.0, count=1, stage=MOMENTS_STAGE)] * 3
    clean = release_moments(
        z, labels, key=MechanismKey("m", 5), **(args | {"plan": MomentsPlan(1e-12)})
    )
    assert abs(np.std(a - clean) - 2.0) < 0.2  # the planned noise std (multiplier x 1)


def test_a_private_run_with_dp_moments(tmp_path):
    """A real tiny run: the plan spends stage 1 + one moments release, within the target."""
    from tdpdm.config import load_config
    from tdpdm.pipeline import run_pipeline

    env = os.environ.get("TDPDM_SHARED_DATASETS")
    data = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
    if not (data / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real data sets not found at {data}")
    cfg = load_config(
        None,
        {
            "data_dir": str(data),
            "subset": 800,
            "out": str(tmp_path / "out"),
            "ledger": str(tmp_path / "ledger.json"),
            "cache_dir": str(tmp_path / "cache"),
            "progress": False,
            "stage1.epochs": 1,
            "stage2.private_model": "dp-moments",
            "evaluation.synthetic_count": 100,
            "distributed.backend": "local",
        },
    )
    report = run_pipeline(cfg, log=lambda m: None).report
    stages = [e["stage"] for e in report["privacy"]["events"]]
    assert stages == ["encoder", MOMENTS_STAGE]
    assert report["privacy"]["epsilon"] <= cfg.epsilon
    assert (tmp_path / "out" / "release" / "models" / "diffusion.pt").is_file()
