"""Ray Tune over stage 2 on a real local Ray, end to end through `run_pipeline`.

`private` mode asks for 5 trials where the budget was calibrated for 2: exactly 2 are admitted,
the others are refused and never get a charge (so never read the latents), every admitted
trial is charged its full plan however it ended, the report's epsilon composes stage 1 with
every trial and stays within the budget, and the run's secret held-out key is in no file.
`released` mode: trials are free, so the run's epsilon is stage 1's alone. The trials run on the
session's local Ray (`local_ray`), as on a cluster the job joins.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tdpdm_test_support import torch_threads
from tune_support import tiny_tune_overrides

from tdpdm.config import load_config
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import PoissonGaussianEvent, event_to_dict
from tdpdm.privacy.ledger import SETTLED, Ledger
from tdpdm.report.schema import read_report_json
from tdpdm.stages.artifacts import REPORT_HTML, REPORT_JSON, RunLayout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(shared_datasets: Path) -> Path:
    return shared_datasets


def _run(tmp_path: Path, data_dir: Path, mode: str, trials: int, **extra):
    from tdpdm.pipeline import run_pipeline

    overrides = tiny_tune_overrides(tmp_path, data_dir, mode, trials) | extra
    cfg = load_config(None, overrides)
    with torch_threads(1):
        run_pipeline(cfg, log=lambda m: None)
    return cfg


def test_private_search_admits_exactly_the_budgeted_trials(
    local_ray, tmp_path, data_dir, fixed_mechanism_keys, monkeypatch
):
    from tdpdm.stages.context import RunContext

    # Keep the custodian's work directory (trial checkpoints, Tune's results and pickles) to
    # check below that the run's secret key is in none of its files either.
    monkeypatch.setattr(RunContext, "remove_work", lambda ctx: None)
    cfg = _run(tmp_path, data_dir, "private", trials=5)
    layout = RunLayout(cfg.out)
    report = read_report_json(layout.release(REPORT_JSON))
    tuning = report["tuning"]
    trials = {t["trial_id"]: t for t in tuning["trials"]}
    admitted = [t for t in trials.values() if t["status"] != "refused"]
    assert len(trials) == 5 and len(admitted) == cfg.tune.budgeted_trials == 2
    assert "completed" in [t["status"] for t in admitted]
    assert "every admitted trial is charged its full plan" in tuning["charging"]

    ledger = Ledger(cfg.ledger)
    budget = ledger.budget("mnist")
    assert ledger.spent("mnist").epsilon <= budget.epsilon == cfg.epsilon
    charges = ledger.charges("mnist")
    assert all(c.status == SETTLED for c in charges)
    by_job = {c.job_id: c for c in charges}
    plan = tuning["trial_plan"]
    for trial in trials.values():
        if trial["status"] == "refused":
            assert trial["job_id"] not in by_job and trial["events"] == []
            assert "2 budgeted trial(s)" in trial["reason"]
            assert "no record was read" in trial["reason"]
            continue
        charge = by_job[trial["job_id"]]
        # Charged its full plan however it ended (stopped early by ASHA, failed, completed).
        assert charge.spent == charge.planned and trial["charged"] == "full plan"
        assert trial["events"] == [event_to_dict(e) for e in charge.spent]
        steps = sum(e.steps for e in charge.spent if isinstance(e, PoissonGaussianEvent))
        scores = sum(e.count for e in charge.spent if e.stage == "tune_score")
        assert (steps, scores) == (plan["steps"], plan["reports"])
        assert trial["steps"] <= steps and trial["reports"] <= scores  # what it ran
        if trial["status"] == "completed":
            assert (trial["steps"], trial["reports"]) == (steps, scores)

    # The guarantee composes stage 1 with every admitted trial's full plan.
    everything = [e for c in charges for e in c.spent]
    bound = compute_epsilon(everything, budget.delta, Adjacency.ADD_REMOVE)
    assert report["privacy"]["epsilon"] == pytest.approx(bound.epsilon, rel=1e-9)
    assert len(report["privacy"]["events"]) == len(everything)
    assert report["privacy"]["epsilon"] <= cfg.epsilon
    # The planned sizes are the expected ones, public functions of n and the fraction.
    assert (plan["expected_train_records"], plan["expected_holdout_records"]) == (360, 40)

    chosen = trials[tuning["selected_trial"]]
    assert chosen["status"] == "completed" and chosen["selected"]
    completed = [t for t in trials.values() if t["status"] == "completed"]
    assert chosen["score"] == min(t["score"] for t in completed)
    # Trial checkpoints and Tune's results are custodian-private work, never in the release.
    assert (Path(layout.work) / "tune" / chosen["trial_id"] / "diffusion.pt").is_file()
    assert list((Path(layout.work) / "ray_results").rglob("tuner.pkl"))
    assert not list(Path(layout.release()).rglob("tune")) and not list(
        Path(layout.release()).rglob("ray_results")
    )

    # The run's secret held-out key was written nowhere, not even in the custodian's work
    # files (it is the first such key drawn in this process).
    secret = seed_key_bytes("fixed/tune-holdout/1")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s in data for s in secret), f"{path} holds the held-out key"

    html = Path(layout.release(REPORT_HTML)).read_text()
    assert 'id="tuning"' in html and 'data-status="refused"' in html
    assert f"{chosen['trial_id']}</code> <b>(chosen)</b>" in html


def seed_key_bytes(label: str) -> list[bytes]:
    """How a fixed test key could appear in a file: little-endian (pickle), big-endian, as
    decimal and hex text."""
    key = int.from_bytes(hashlib.sha256(label.encode()).digest()[:16], "big")
    return [
        key.to_bytes(16, "little")[:15],
        key.to_bytes(16, "big")[1:],
        str(key).encode(),
        f"{key:x}".encode(),
    ]


def test_released_search_is_free(local_ray, tmp_path, data_dir):
    # ASHA on fresh-noise scores could stop all three trials (seen once in CI); this test is
    # about charging, so every trial runs to the last report (grace period = reports).
    cfg = _run(tmp_path, data_dir, "released", trials=3, **{"tune.grace_period": 3})
    report = json.loads(Path(RunLayout(cfg.out).release(REPORT_JSON)).read_text())
    trials = report["tuning"]["trials"]
    assert all(t["status"] in ("completed", "stopped_by_asha") for t in trials)
    assert all(t["events"] == [] for t in trials)
    charges = Ledger(cfg.ledger).charges("mnist")
    assert len(charges) == 1  # stage 1 (encoder and release) only
    stage1 = compute_epsilon(charges[0].spent, cfg.delta, Adjacency.REPLACE_ONE)
    assert report["privacy"]["epsilon"] == pytest.approx(stage1.epsilon, rel=1e-9)
    assert report["privacy"]["adjacency"] == "replace_one"
