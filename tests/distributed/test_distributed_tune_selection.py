"""Which trial's model a Tune search keeps (`select_trial`): pure selection over the trials'
descriptions, no Ray. ASHA decides on noisy scores, so a search can end with every trial stopped;
the run must then keep the best model of the deepest rung instead of failing."""

from __future__ import annotations

import pytest

from tdpdm.distributed.tune_stage2 import COMPLETED, FAILED, STOPPED, select_trial


def _trial(trial_id: str, status: str, scores: list[float]) -> dict:
    return {
        "trial_id": trial_id,
        "status": status,
        "reports": len(scores),
        "score": scores[-1] if scores else None,
        "scores": scores,
    }


def test_a_completed_trial_beats_a_stopped_one_with_a_lower_score():
    trials = [
        _trial("a", STOPPED, [0.1]),
        _trial("b", COMPLETED, [0.5, 0.4, 0.3]),
        _trial("c", COMPLETED, [0.5, 0.4, 0.2]),
    ]
    assert select_trial(trials, "run")["trial_id"] == "c"


def test_every_trial_stopped_keeps_the_best_of_the_deepest_rung():
    trials = [
        _trial("a", STOPPED, [0.3]),
        _trial("b", STOPPED, [0.5, 0.45]),
        _trial("c", STOPPED, [0.5, 0.40]),
        _trial("d", FAILED, []),
    ]
    assert select_trial(trials, "run")["trial_id"] == "c"


def test_no_trial_with_a_score_is_one_clear_error():
    trials = [_trial("a", FAILED, []), _trial("b", "refused", [])]
    with pytest.raises(RuntimeError, match=r"no trial of run reported a score \(a: failed"):
        select_trial(trials, "run")
