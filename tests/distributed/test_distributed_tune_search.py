"""Ray Tune over stage 2 on a real local Ray, end to end through `run_pipeline`.

`private` mode asks for 5 trials where the budget was calibrated for 2: the ledger's total
stays within the budget, refused trials never get a charge (so never read the latents), every
trial that ran is settled exactly at what it recorded, and the report's epsilon composes stage 1
with every trial. `released` mode: trials are free, so the run's epsilon is stage 1's alone.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from tune_support import shared_datasets_root, tiny_tune_overrides

from tdpdm.config import load_config
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import PoissonGaussianEvent, event_to_dict
from tdpdm.privacy.ledger import SETTLED, Ledger
from tdpdm.report.schema import read_report_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir() -> Path:
    root = shared_datasets_root()
    if not (root / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"the real data sets are needed at {root}")
    return root


def _run(tmp_path: Path, data_dir: Path, mode: str, trials: int):
    from tdpdm.pipeline import run_pipeline

    cfg = load_config(None, tiny_tune_overrides(tmp_path, data_dir, mode, trials))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pipeline(cfg, log=lambda m: None)
    finally:
        torch.set_num_threads(before)
    return cfg


def test_private_search_asks_for_more_trials_than_the_budget_allows(tmp_path, data_dir):
    cfg = _run(tmp_path, data_dir, "private", trials=5)
    report = read_report_json(Path(cfg.out) / "report.json")
    tuning = report["tuning"]
    trials = {t["trial_id"]: t for t in tuning["trials"]}
    statuses = [t["status"] for t in trials.values()]
    assert len(trials) == 5 and "refused" in statuses and "completed" in statuses

    ledger = Ledger(cfg.ledger)
    budget = ledger.budget("mnist")
    assert ledger.spent("mnist").epsilon <= budget.epsilon == cfg.epsilon
    charges = ledger.charges("mnist")
    assert all(c.status == SETTLED for c in charges)
    by_job = {c.job_id: c for c in charges}
    for trial in trials.values():
        if trial["status"] == "refused":
            assert trial["job_id"] not in by_job and trial["events"] == []
            assert "no record was read" in trial["reason"]
            continue
        charge = by_job[trial["job_id"]]
        assert trial["events"] == [event_to_dict(e) for e in charge.spent]
        if trial["status"] in ("completed", "stopped_by_asha"):
            # Exact at the report boundary: the steps and scores recorded are the ones reported.
            steps = sum(e.steps for e in charge.spent if isinstance(e, PoissonGaussianEvent))
            scores = sum(e.count for e in charge.spent if e.stage == "tune_score")
            assert (steps, scores) == (trial["steps"], trial["reports"])

    # The guarantee composes stage 1 with every trial that ran: all of them drove the choice.
    everything = [e for c in charges for e in c.spent]
    bound = compute_epsilon(everything, budget.delta, Adjacency.ADD_REMOVE)
    assert report["privacy"]["epsilon"] == pytest.approx(bound.epsilon, rel=1e-9)
    assert len(report["privacy"]["events"]) == len(everything)
    assert report["privacy"]["epsilon"] <= cfg.epsilon

    chosen = trials[tuning["selected_trial"]]
    assert chosen["status"] == "completed" and chosen["selected"]
    completed = [t for t in trials.values() if t["status"] == "completed"]
    assert chosen["score"] == min(t["score"] for t in completed)
    saved = torch.load(io.BytesIO((Path(cfg.out) / "checkpoints/diffusion.pt").read_bytes()))
    trial_ckpt = Path(cfg.out) / "tune" / chosen["trial_id"] / "diffusion.pt"
    assert all(torch.equal(saved[k], v) for k, v in torch.load(trial_ckpt).items())
    assert report["config"]["stage2"]["hidden"] == chosen["hyperparameters"]["hidden"]

    html = (Path(cfg.out) / "report.html").read_text()
    assert 'id="tuning"' in html and 'data-status="refused"' in html
    assert f"{chosen['trial_id']}</code> <b>(chosen)</b>" in html


def test_released_search_is_free(tmp_path, data_dir):
    cfg = _run(tmp_path, data_dir, "released", trials=3)
    report = json.loads((Path(cfg.out) / "report.json").read_text())
    trials = report["tuning"]["trials"]
    assert all(t["status"] in ("completed", "stopped_by_asha") for t in trials)
    assert all(t["events"] == [] for t in trials)
    charges = Ledger(cfg.ledger).charges("mnist")
    assert len(charges) == 1  # stage 1 (encoder and release) only
    stage1 = compute_epsilon(charges[0].spent, cfg.delta, Adjacency.REPLACE_ONE)
    assert report["privacy"]["epsilon"] == pytest.approx(stage1.epsilon, rel=1e-9)
    assert report["privacy"]["adjacency"] == "replace_one"
