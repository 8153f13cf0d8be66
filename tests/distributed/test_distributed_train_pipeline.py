"""`tdpdm run` with the main job's config runs stage 1 on Ray Train (a local Ray) by default.
Here it joins the session's local Ray (`local_ray`); tests/lipschitz shows a run starting and
stopping its own.

Its checkpoints (every rank's sampling, noise and loss generator state: as secret as the
mechanism key) are written to the custodian's work area and deleted once the run has succeeded.
(Where Ray is missing: test_distributed_backend_missing_ray.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tdpdm_test_support import (
    assert_checkpoints_were_private_and_deleted,
    watch_checkpoint_deletions,
)
from train_support import main_job_args

from tdpdm.cli import main
from tdpdm.privacy.ledger import Ledger
from tdpdm.stages.artifacts import RunLayout
from tdpdm.telemetry import Telemetry
from tdpdm.telemetry import core as telemetry_core


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
    assert main(main_job_args(tmp_path, "--set=distributed.num_workers=2")) == 0
    out = tmp_path / "out"
    layout = RunLayout(str(out))
    report = json.loads(Path(layout.release("report.json")).read_text())
    assert report["config"]["distributed"]["backend"] == "ray"
    (encoder,) = [s for s in report["stages"] if s["name"] == "encoder"]
    details = encoder["details"]
    assert details["backend"] == "ray" and details["num_workers"] == 2
    stage1 = [e for e in report["privacy"]["events"] if e.get("stage") == "encoder"]
    assert len(stage1) == 1 and stage1[0]["steps"] == details["steps"] == 4  # 400 / 100 x 1
    # Stage 2 (the main job's dp-moments) summed its moment tables on Ray, one shard a worker,
    # and still released each table once.
    (moments,) = [s for s in report["stages"] if s["name"] == "dp_moments"]
    assert moments["details"]["sums"] == "ray (2 shards)"
    stage2 = [e["stage"] for e in report["privacy"]["events"] if e.get("stage") != "encoder"]
    assert stage2 == ["latent_centres", "latent_moments"]
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
