"""A tiny `tdpdm run --mode released --stage1-mechanism lipschitz-vae`, locally and on Ray
Train: the release is recorded, its bound and the check's pass/fail (never the observed ratios)
are in the published latents, the report says what is covered, and no checkpoint with secret
generator state is left once the run has succeeded."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from tdpdm_test_support import (
    RUN_CUSTODIAN_FILES,
    RUN_RELEASE_FILES,
    assert_checkpoints_were_private_and_deleted,
    assert_run_parts,
    watch_checkpoint_deletions,
)

from tdpdm.cli import main
from tdpdm.privacy.ledger import Ledger
from tdpdm.stages import lipschitz_release
from tdpdm.stages.artifacts import RunLayout
from tdpdm.stages.latents_io import read_latents
from tdpdm.stages.lipschitz_release import label_length
from tdpdm.stages.synthetic_io import read_synthetic

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SUBSET = 400


def _args(tmp_path: Path, data_root: Path, backend: str, *extra: str) -> list[str]:
    sets = {
        "subset": str(SUBSET),
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


@pytest.fixture
def observed_ratios(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The check's observed maxima, caught in this process (where they may live) so that the
    tests can look for them in everything the run wrote or printed."""
    seen: list[float] = []
    real = lipschitz_release.check_lipschitz

    def recording(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.extend([result.max_ratio_pairs, result.max_ratio_local])
        return result

    monkeypatch.setattr(lipschitz_release, "check_lipschitz", recording)
    return seen


def _check_run(tmp_path: Path, observed: list[float], printed: str = "") -> dict:
    layout = RunLayout(str(tmp_path / "out"))
    release = Path(layout.release())
    report = json.loads((release / "report.json").read_text())
    events = report["privacy"]["events"]
    assert [e["stage"] for e in events] == ["lipschitz_vae", "lipschitz_release"]
    assert events[0]["steps"] == 4  # 400 planned records / batch 100 x 1 epoch
    assert report["n_records"] == SUBSET  # the planned (public) size, not the realised one
    assert report["privacy"]["adjacency"] == "replace_one"
    assert report["privacy"]["epsilon"] <= 8.0
    assert "proven" in report["privacy"]["statement"] and "DP-SGD" in report["privacy"]["statement"]

    _, labels, meta = read_latents(layout.latents("released"))
    # A Poisson subset: each of the 60000 records kept with probability 400/60000 (sd ~ 20).
    assert abs(len(labels) - SUBSET) < 100 and meta["mechanism"] == "lipschitz-vae"
    bound = meta["lipschitz_bound"]
    assert 0 < bound <= 1.0
    # Only pass/fail of the check is published: the observed ratios are unnoised maxima over
    # private records (issue 11, finding 5).
    check = meta["lipschitz_check"]
    assert check == {"bound": bound, "result": "passed", "pairs_checked": check["pairs_checked"]}
    assert check["pairs_checked"] > 0
    assert report["latents"]["lipschitz_check"] == check
    expected = math.sqrt((28 * bound) ** 2 + 2 * label_length(0.6) ** 2)
    assert meta["sensitivity"] == pytest.approx(expected, rel=1e-12)
    assert meta["noise_std"] == pytest.approx(
        events[1]["noise_multiplier"] * expected / 2, rel=1e-12
    )
    _assert_ratios_never_left_the_process(tmp_path / "out", observed, printed)

    ledger = Ledger(str(tmp_path / "ledger.json"))
    assert [c.status for c in ledger.charges("mnist")] == ["settled"]
    assert ledger.spent("mnist").epsilon == pytest.approx(report["privacy"]["epsilon"], rel=1e-6)
    assert (release / "samples.png").stat().st_size > 0
    # No training loss is published (none asked for), and nothing read from real data.
    assert "training_losses" not in report and "final_loss" not in json.dumps(report)
    assert set(report["metrics"].values()) == {None}
    return report


def _assert_ratios_never_left_the_process(out: Path, observed: list[float], printed: str) -> None:
    """Neither a field for them nor their values, in any file (release or custodian) or line."""
    assert len(observed) == 2 and max(observed) > 0, observed
    # Full precision (how JSON and Parquet metadata write a float): a shorter rendering could
    # match the bound itself, which the encoder's ratios come close to by design.
    needles = [b"max_ratio", b"observed_ratio", *(repr(v).encode() for v in observed)]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        leaked = [n for n in needles if n in data]
        assert not leaked, f"{path.relative_to(out)} holds {leaked}"
    for needle in [*needles, b"observed ratio"]:
        assert needle.decode() not in printed


def test_lipschitz_run_local(tmp_path, data_root, observed_ratios, capsys) -> None:
    assert main(_args(tmp_path, data_root, "local")) == 0
    report = _check_run(tmp_path, observed_ratios, capsys.readouterr().out)
    (encoder,) = [s for s in report["stages"] if s["name"] == "encoder"]
    assert encoder["details"]["backend"] == "local"
    # `tdpdm sample` rebuilds the VAE's decoder from the release alone (issue 15).
    more = tmp_path / "more.parquet"
    assert main(["sample", "--from", str(tmp_path / "out"), "--n", "20", "--out", str(more)]) == 0
    assert read_synthetic(str(more))[0].shape == (20, 28, 28)


RELEASE_FILES = RUN_RELEASE_FILES | {"latents/latents.parquet"}  # released mode: the DP latents


@pytest.mark.slow
def test_lipschitz_run_on_ray_train(
    no_ray_running, tmp_path, data_root, monkeypatch, observed_ratios, capsys
):
    """Ray Train checkpoints hold every rank's sampling, noise and loss generator state (as
    good as the mechanism key): they are written to the custodian's work area only and deleted
    once the run has succeeded, and the release holds exactly the covered artefacts (issue 11,
    finding 2: they used to stay in <out>/ray next to the release). No Ray was running: the
    run starts its own local Ray and stops it at the end."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    checkpoints = watch_checkpoint_deletions(monkeypatch)
    assert main(_args(tmp_path, data_root, "ray", "--set=distributed.num_workers=2")) == 0
    assert not ray.is_initialized()
    report = _check_run(tmp_path, observed_ratios, capsys.readouterr().out)
    (encoder,) = [s for s in report["stages"] if s["name"] == "encoder"]
    assert encoder["details"]["backend"] == "ray" and encoder["details"]["num_workers"] == 2

    out, layout = tmp_path / "out", RunLayout(str(tmp_path / "out"))
    assert_checkpoints_were_private_and_deleted(out, checkpoints)

    release = Path(layout.release())
    assert_run_parts(out, release=RELEASE_FILES, custodian=RUN_CUSTODIAN_FILES)
    for name in ("autoencoder.pt", "diffusion.pt"):
        weights = torch.load(release / "models" / name, map_location="cpu", weights_only=True)
        assert not [k for k in weights if "rng" in k or "generator" in k]


def test_lipschitz_encode_then_diffuse(tmp_path, data_root) -> None:
    """`tdpdm encode` then `tdpdm diffuse --from`: the VAE is rebuilt from the manifest, and
    stage 2 on the release costs nothing more."""
    args = _args(tmp_path, data_root, "local")
    assert main(["encode", *args[1:]]) == 0
    manifest = json.loads(Path(RunLayout(str(tmp_path / "out")).manifest).read_text())
    assert manifest["mechanism"] == "lipschitz-vae"
    spent = Ledger(str(tmp_path / "ledger.json")).spent("mnist").epsilon
    diffuse_args = [a.replace(str(tmp_path / "out"), str(tmp_path / "out2")) for a in args[1:]]
    assert main(["diffuse", "--from", str(tmp_path / "out"), *diffuse_args]) == 0
    release = Path(RunLayout(str(tmp_path / "out2")).release())
    report = json.loads((release / "report.json").read_text())
    assert [e["stage"] for e in report["privacy"]["events"]] == [
        "lipschitz_vae",
        "lipschitz_release",
    ]
    assert Ledger(str(tmp_path / "ledger.json")).spent("mnist").epsilon == pytest.approx(spent)
    assert (release / "samples.png").stat().st_size > 0


@pytest.mark.slow
def test_lipschitz_release_feeds_a_ray_tune_search(
    no_ray_running, tmp_path, data_root, monkeypatch, observed_ratios, capsys
) -> None:
    """Stage 2 searched with Ray Tune on the Lipschitz release: trials read only the release,
    so the ledger holds the two stage-1 events and nothing else. The local backend with no Ray
    running: the search starts its own local Ray and stops it."""
    import ray

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
    assert not ray.is_initialized()
    report = _check_run(tmp_path, observed_ratios, capsys.readouterr().out)
    (tune_stage,) = [s for s in report["stages"] if s["name"] == "tune"]
    assert tune_stage["details"]["trials"] == 2 and tune_stage["details"]["dp_sgd"] is False
