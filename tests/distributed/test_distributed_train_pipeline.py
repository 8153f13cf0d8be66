"""`tdpdm run` with the main job's config runs stage 1 on Ray Train (a local Ray) by default.
Here it joins the session's local Ray (`local_ray`); tests/lipschitz shows a run starting and
stopping its own.

Its checkpoints (every rank's sampling, noise and loss generator state: as secret as the
mechanism key) are written to the custodian's work area and deleted once the run has succeeded.
And where Ray is missing, the same command stops with one line saying what to do, leaving the
ledger with nothing spent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tdpdm_test_support import (
    assert_checkpoints_were_private_and_deleted,
    shared_datasets_root,
    watch_checkpoint_deletions,
)

from tdpdm.cli import main
from tdpdm.privacy.ledger import Ledger
from tdpdm.stages.artifacts import RunLayout
from tdpdm.telemetry import Telemetry
from tdpdm.telemetry import core as telemetry_core

MAIN_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "main.yaml"


def _args(tmp_path: Path, *extra: str) -> list[str]:
    sets = {
        "subset": "400",
        "stage1.epochs": "1",
        "stage1.batch_size": "100",
        "stage1.width": "8",
        "stage1.latent_dim": "8",
        "stage2.epochs": "2",
        "stage2.batch_size": "200",
        "stage2.hidden": "32",
        "stage2.sampler_steps": "5",
        "evaluation.enabled": "false",
        "evaluation.synthetic_count": "50",
        "distributed.checkpoint_every": "2",
    }
    return [
        "run",
        "--config", str(MAIN_CONFIG),
        "--data-dir", str(shared_datasets_root()),
        "--out", str(tmp_path / "out"),
        "--ledger", str(tmp_path / "ledger.json"),
        "--cache-dir", str(tmp_path / "cache"),
        "--mode", "private",
        "--no-progress",
        *[f"--set={k}={v}" for k, v in sets.items()],
        *extra,
    ]  # fmt: skip


class _Steps(Telemetry):
    """Counts the optimizer steps the pipeline reports, per stage."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def step(self, stage: str, steps: int, loss: float | None, samples_per_s: float) -> None:
        self.steps[stage] = self.steps.get(stage, 0) + steps


@pytest.mark.slow
def test_main_job_runs_stage1_on_ray_train(local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    checkpoints = watch_checkpoint_deletions(monkeypatch)
    telemetry = _Steps()
    monkeypatch.setattr(telemetry_core, "_current", telemetry)
    assert main(_args(tmp_path, "--set=distributed.num_workers=2")) == 0
    out = tmp_path / "out"
    layout = RunLayout(str(out))
    report = json.loads(Path(layout.release("report.json")).read_text())
    assert report["config"]["distributed"]["backend"] == "ray"
    (encoder,) = [s for s in report["stages"] if s["name"] == "encoder"]
    details = encoder["details"]
    assert details["backend"] == "ray" and details["num_workers"] == 2
    stage1 = [e for e in report["privacy"]["events"] if e.get("stage") == "encoder"]
    assert len(stage1) == 1 and stage1[0]["steps"] == details["steps"] == 4  # 400 / 100 x 1
    # Ray Train's steps reach telemetry (tdpdm_training_steps_total; the Prometheus scrape test
    # in tests/telemetry runs on the local backend).
    assert telemetry.steps.get("encoder") == details["steps"], telemetry.steps
    charges = Ledger(str(tmp_path / "ledger.json")).charges("mnist")
    assert [c.status for c in charges] == ["settled"]

    # Checkpoints were written (steps 2 and 4), held every rank's generator states, stayed in
    # the custodian's work area and went with it.
    assert_checkpoints_were_private_and_deleted(out, checkpoints)
    # No training loss published: not in the report, not in the driver's output.
    custodian = json.loads(Path(layout.custodian("report.json")).read_text())
    for doc in (report, custodian):
        assert "training_losses" not in doc and "final_loss" not in json.dumps(doc)
    assert "loss" not in capsys.readouterr().out.lower()


def test_missing_ray_is_one_clear_line_and_spends_nothing(
    no_ray_running, tmp_path, monkeypatch, capsys
):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(_args(tmp_path))
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code != 0 and err.startswith("tdpdm: error: Ray is not installed")
    assert "install the `ray` extra" in err and "distributed.backend: local" in err
    ledger = Ledger(str(tmp_path / "ledger.json"))
    assert ledger.charges("mnist") == []  # refused before reserving anything
