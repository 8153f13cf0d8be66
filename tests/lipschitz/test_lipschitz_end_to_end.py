"""A tiny `tdpdm run --mode released --stage1-mechanism lipschitz-vae`, locally and on Ray
Train: the release is recorded, its bound and check are in the published latents, and the
report says what is covered."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tdpdm.cli import main
from tdpdm.privacy.ledger import Ledger
from tdpdm.stages.latents_io import read_latents
from tdpdm.stages.lipschitz_release import label_length

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _args(tmp_path: Path, data_root: Path, backend: str, *extra: str) -> list[str]:
    sets = {
        "subset": "400",
        "epsilon": "8",
        "stage1.epochs": "1",
        "stage1.batch_size": "100",
        "stage1.latent_dim": "4",
        "stage1.vae_hidden": "32",
        "stage1.lr": "0.02",
        "stage1.grad_sample_mode": "ghost",
        "stage2.mixture_iterations": "5",
        "evaluation.enabled": "false",
        "evaluation.synthetic_count": "50",
        "distributed.backend": backend,
    }
    return [
        "run",
        "--data-dir", str(data_root),
        "--out", str(tmp_path / "out"),
        "--ledger", str(tmp_path / "ledger.json"),
        "--cache-dir", str(tmp_path / "cache"),
        "--mode", "released",
        "--stage1-mechanism", "lipschitz-vae",
        "--no-progress",
        *[f"--set={k}={v}" for k, v in sets.items()],
        *extra,
    ]  # fmt: skip


def _check_run(tmp_path: Path) -> dict:
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    events = report["privacy"]["events"]
    assert [e["stage"] for e in events] == ["lipschitz_vae", "lipschitz_release"]
    assert events[0]["steps"] == 4  # 400 records / batch 100 x 1 epoch
    assert report["privacy"]["adjacency"] == "replace_one"
    assert report["privacy"]["epsilon"] <= 8.0
    assert "proven" in report["privacy"]["statement"] and "DP-SGD" in report["privacy"]["statement"]

    _, labels, meta = read_latents(str(out / "latents" / "latents.parquet"))
    assert len(labels) == 400 and meta["mechanism"] == "lipschitz-vae"
    bound = meta["lipschitz_bound"]
    assert 0 < bound <= 1.0
    assert 0 < meta["lipschitz_check"]["max_observed_ratio"] <= bound
    expected = math.sqrt((28 * bound) ** 2 + 2 * label_length(0.6) ** 2)
    assert meta["sensitivity"] == pytest.approx(expected, rel=1e-12)
    assert meta["noise_std"] == pytest.approx(
        events[1]["noise_multiplier"] * expected / 2, rel=1e-12
    )

    ledger = Ledger(str(tmp_path / "ledger.json"))
    assert [c.status for c in ledger.charges("mnist")] == ["settled"]
    assert ledger.spent("mnist").epsilon == pytest.approx(report["privacy"]["epsilon"], rel=1e-6)
    assert (out / "samples.png").stat().st_size > 0
    return report


def test_lipschitz_run_local(tmp_path, data_root) -> None:
    assert main(_args(tmp_path, data_root, "local")) == 0
    report = _check_run(tmp_path)
    (encoder,) = [s for s in report["stages"] if s["name"] == "encoder"]
    assert encoder["details"]["backend"] == "local"


@pytest.mark.slow
def test_lipschitz_run_on_ray_train(tmp_path, data_root, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(_args(tmp_path, data_root, "ray", "--set=distributed.num_workers=2")) == 0
    report = _check_run(tmp_path)
    (encoder,) = [s for s in report["stages"] if s["name"] == "encoder"]
    assert encoder["details"]["backend"] == "ray" and encoder["details"]["num_workers"] == 2
    assert list((tmp_path / "out" / "ray").glob("*-stage1-*/checkpoint_*"))


def test_lipschitz_encode_then_diffuse(tmp_path, data_root) -> None:
    """`tdpdm encode` then `tdpdm diffuse --from`: the VAE is rebuilt from the manifest, and
    stage 2 on the release costs nothing more."""
    args = _args(tmp_path, data_root, "local")
    assert main(["encode", *args[1:]]) == 0
    manifest = json.loads((tmp_path / "out" / "stage1.json").read_text())
    assert manifest["mechanism"] == "lipschitz-vae"
    spent = Ledger(str(tmp_path / "ledger.json")).spent("mnist").epsilon
    diffuse_args = [a.replace(str(tmp_path / "out"), str(tmp_path / "out2")) for a in args[1:]]
    assert main(["diffuse", "--from", str(tmp_path / "out"), *diffuse_args]) == 0
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert [e["stage"] for e in report["privacy"]["events"]] == [
        "lipschitz_vae",
        "lipschitz_release",
    ]
    assert Ledger(str(tmp_path / "ledger.json")).spent("mnist").epsilon == pytest.approx(spent)
    assert (tmp_path / "out2" / "samples.png").stat().st_size > 0


@pytest.mark.slow
def test_lipschitz_release_feeds_a_ray_tune_search(tmp_path, data_root, monkeypatch) -> None:
    """Stage 2 searched with Ray Tune on the Lipschitz release: trials read only the release,
    so the ledger holds the two stage-1 events and nothing else."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tune = [
        "--set=stage2.released_model=diffusion",
        "--set=stage2.epochs=4",
        "--set=stage2.batch_size=120",
        "--set=stage2.sampler_steps=5",
        "--set=tune.trials=2",
        "--set=tune.max_concurrent_trials=2",
        "--set=tune.reports=3",
        "--set=tune.hidden=[32, 48]",
        "--set=tune.depth=[1]",
    ]
    assert main(_args(tmp_path, data_root, "local", *tune)) == 0
    report = _check_run(tmp_path)
    (tune_stage,) = [s for s in report["stages"] if s["name"] == "tune"]
    assert tune_stage["details"]["trials"] == 2 and tune_stage["details"]["dp_sgd"] is False
