"""The report's `tuning` section: validated field by field, rendered as a trials table."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from tdpdm.report.grid import grid_png_bytes
from tdpdm.report.html import render_report_html
from tdpdm.report.schema import validate_report

SCORE_EVENT = {"kind": "gaussian", "stage": "tune_score", "noise_multiplier": 4.0, "count": 2}
SEGMENT = {
    "kind": "poisson_gaussian",
    "stage": "diffusion",
    "noise_multiplier": 1.2,
    "sampling_rate": 0.25,
    "steps": 8,
}
TUNING: dict[str, Any] = {
    "trials_requested": 3,
    "budgeted_trials": 2,
    "score": "noisy held-out denoising loss",
    "charging": "every admitted trial is charged its full plan",
    "selected_trial": "t0",
    "trials": [
        {
            "trial_id": "t0",
            "status": "completed",
            "hyperparameters": {"lr": 0.002, "hidden": 32},
            "steps": 8,
            "score": 0.81,
            "events": [SEGMENT, SCORE_EVENT],
            "charged": "full plan",
            "selected": True,
        },
        {
            "trial_id": "t1",
            "status": "stopped_by_asha",
            "hyperparameters": {"lr": 0.004, "hidden": 48},
            "steps": 4,  # what it ran; it is charged its full plan all the same
            "score": 0.93,
            "events": [dict(SEGMENT), dict(SCORE_EVENT)],
            "charged": "full plan",
        },
        {
            "trial_id": "t2",
            "status": "refused",
            "hyperparameters": {"lr": 0.002, "hidden": 48},
            "steps": 0,
            "score": None,
            "events": [],
            "charged": "nothing",
        },
    ],
}


def _report() -> dict[str, Any]:
    return {
        "tdpdm_version": "0.1.0",
        "run_id": "r1",
        "dataset": "mnist",
        "mode": "private",
        "n_records": 400,
        "seed": 1,
        "wall_time_s": 10.0,
        "hardware": {
            "device": "cpu",
            "device_name": "cpu",
            "cpu": "cpu",
            "cpu_count": 2,
            "torch": "2",
            "python": "3.11",
            "platform": "linux",
        },
        "privacy": {
            "epsilon": 7.5,
            "delta": 1e-5,
            "adjacency": "add_remove",
            "accountant": "prv (upper bound)",
            "events": [SEGMENT, SCORE_EVENT],
            "budget": {
                "epsilon": 8.0,
                "delta": 1e-5,
                "adjacency": "add_remove",
                "spent_epsilon_after_run": 7.5,
            },
            "statement": "statement",
            "not_covered": [],
        },
        "metrics": {"accuracy": None, "inception_score": None, "classifier_fd": None, "fid": None},
        "metrics_note": "n/a",
        "config": {},
        "stages": [],
        "artifacts": {"synthetic": "s", "samples_png": "p", "report_html": "h"},
        "tuning": copy.deepcopy(TUNING),
    }


def test_a_good_tuning_section_validates_and_renders_every_trial():
    report = _report()
    validate_report(report)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    grid = grid_png_bytes(images, np.arange(20) % 10, per_class=2)
    html = render_report_html(report, grid_png=grid)
    assert html.count('data-status="') == 3
    assert 'data-status="refused"' in html and "refused: budget (read no data)" in html
    assert "stopped early by ASHA" in html and "t0</code> <b>(chosen)</b>" in html


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (lambda t: t["trials"][0].update(status="done"), "tuning.trials[0].status"),
        (lambda t: t["trials"][2].update(events=[SEGMENT]), "refused trial"),
        (lambda t: t.update(selected_trial="t9"), "tuning.selected_trial"),
        (lambda t: t["trials"][1]["events"][0].update(steps=0), "tuning.trials[1].events[0]"),
        (lambda t: t["trials"][0].pop("hyperparameters"), "tuning.trials[0].hyperparameters"),
    ],
)
def test_a_broken_tuning_section_is_refused_naming_the_field(breaks, message):
    report = _report()
    breaks(report["tuning"])
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_report(report)
