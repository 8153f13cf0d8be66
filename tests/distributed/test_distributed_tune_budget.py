"""The tuning budget without Ray: calibration, the admission cap, exact recording, and every
admitted trial closed at its full plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tdpdm.config import ConfigError, load_config
from tdpdm.distributed.trial import HeldOutScore, IncrementalRecorder, score_draws
from tdpdm.distributed.trial_budget import (
    Refusal,
    TrialAdmission,
    close_trial_charge,
    plan_trials,
    trial_charges,
    trial_job_prefix,
)
from tdpdm.models.diffusion import LatentDenoiser
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent
from tdpdm.privacy.ledger import SETTLED, Charge, Ledger
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession

DELTA = 1e-5
STAGE1 = [PoissonGaussianEvent(2.0, 0.3, 4, "encoder")]


@pytest.fixture(scope="module")
def private_plan():
    cfg = load_config(
        None,
        {
            "epsilon": 8.0,
            "stage2.epochs": 4,
            "stage2.batch_size": 120,
            "tune.trials": 6,
            "tune.budgeted_trials": 2,
            "tune.reports": 3,
        },
    )
    return cfg, plan_trials(cfg, 400, Adjacency.ADD_REMOVE, DELTA, STAGE1)


def _admission(
    tmp_path: Path, budget: float, run_id: str = "run1", budgeted: int = 2
) -> TrialAdmission:
    ledger = Ledger(str(tmp_path / "ledger.json"))
    ledger.set_budget("mnist", budget, DELTA, "add_remove")
    ledger.reserve("mnist", run_id, STAGE1)  # stage 1 of the run holds its charge
    return TrialAdmission(
        str(tmp_path / "ledger.json"), "mnist", run_id, 8.0, DELTA, "add_remove", STAGE1, budgeted
    )


def test_calibration_fits_exactly_the_budgeted_trials(private_plan):
    _, plan = private_plan
    two = compute_epsilon([*STAGE1, *plan.events(), *plan.events()], DELTA, Adjacency.ADD_REMOVE)
    three = compute_epsilon([*STAGE1, *plan.events() * 3], DELTA, Adjacency.ADD_REMOVE)
    assert two.epsilon <= 8.0 < three.epsilon
    assert two.epsilon > 7.9  # the calibration spends the budget, not a fraction of it
    assert plan.report_steps()[-1] == plan.steps and len(plan.report_steps()) == 3
    # Planning uses the EXPECTED sizes (public functions of n and the fraction).
    assert (plan.n_train, plan.n_holdout) == (360, 40)
    assert plan.segment.sampling_rate == pytest.approx(120 / 360)


def test_admission_stops_at_the_budgeted_trials_and_the_refusal_is_final(tmp_path, private_plan):
    _, plan = private_plan
    admission = _admission(tmp_path, budget=20.0)  # the data set could pay; the run may not
    prefix = trial_job_prefix("run1")
    first = admission.reserve(prefix + "a", plan.events())
    second = admission.reserve(prefix + "b", plan.events())
    third = admission.reserve(prefix + "c", plan.events())
    assert isinstance(first, Charge) and isinstance(second, Charge)
    assert isinstance(third, Refusal) and "already admitted its 2 budgeted trial(s)" in third.reason
    assert "no record was read" in third.reason
    assert [c.job_id for c in trial_charges(admission.ledger, "mnist", "run1")] == [
        prefix + "a",
        prefix + "b",
    ]
    # A resumed trial (same job id, open charge) gets its charge back, not a refusal.
    assert admission.reserve(prefix + "a", plan.events()).charge_id == first.charge_id
    # Closing admitted trials frees nothing: the cap counts every admission, whatever its end.
    for charge in trial_charges(admission.ledger, "mnist", "run1"):
        close_trial_charge(admission.ledger, charge, note="test")
    again = admission.reserve(prefix + "c", plan.events())
    assert isinstance(again, Refusal) and "budgeted trial(s)" in again.reason


def test_the_run_target_refuses_too(tmp_path, private_plan):
    _, plan = private_plan
    admission = _admission(tmp_path, budget=20.0, budgeted=5)  # a cap looser than the target
    outcomes = [admission.reserve(trial_job_prefix("run1") + k, plan.events()) for k in "abc"]
    assert isinstance(outcomes[1], Charge)
    assert isinstance(outcomes[2], Refusal) and "over its target 8" in outcomes[2].reason


def test_the_ledger_budget_refuses_too(tmp_path, private_plan):
    _, plan = private_plan
    admission = _admission(tmp_path, budget=6.0)  # the data set is poorer than the run target
    outcomes = [admission.reserve(trial_job_prefix("run1") + k, plan.events()) for k in "abc"]
    refused = [o for o in outcomes if isinstance(o, Refusal)]
    assert refused and "over its budget" in refused[-1].reason
    assert admission.ledger.spent("mnist").epsilon <= 6.0


def test_a_trial_stopped_early_is_charged_its_full_plan(tmp_path, private_plan):
    _, plan = private_plan
    admission = _admission(tmp_path, budget=8.0)
    prefix = trial_job_prefix("run1")
    charge = admission.reserve(prefix + "a", plan.events())
    session = PrivacySession(admission.ledger, charge)
    recorder = IncrementalRecorder(session, plan.segment)
    first_rung = plan.report_steps()[0]
    recorder.flush(first_rung)  # what a trial does right before its first report
    session.record(plan.score_event())
    recorder.record(plan.segment.event(steps=first_rung))  # train_dpsgd's final record
    assert session.charge.spent == [plan.segment.event(steps=first_rung), plan.score_event(1)]
    closed = close_trial_charge(admission.ledger, charge, note="stopped")
    assert closed.status == SETTLED and closed.spent == plan.events()
    assert close_trial_charge(admission.ledger, charge, note="again") == closed  # idempotent
    # Its early stop freed nothing: one more full trial fits (the budget planned 2), a third
    # is refused, and the run's epsilon is exactly stage 1 plus two full plans.
    assert not isinstance(admission.reserve(prefix + "b", plan.events()), Refusal)
    assert isinstance(admission.reserve(prefix + "c", plan.events()), Refusal)
    full = compute_epsilon([*STAGE1, *plan.events() * 2], DELTA, Adjacency.ADD_REMOVE)
    run = compute_epsilon(admission.run_events(), DELTA, Adjacency.ADD_REMOVE)
    assert run.epsilon == pytest.approx(full.epsilon, rel=1e-12) and run.epsilon <= 8.0


def test_a_failed_trial_is_charged_its_full_plan(tmp_path, private_plan):
    _, plan = private_plan
    admission = _admission(tmp_path, budget=8.0)
    charge = admission.reserve(trial_job_prefix("run1") + "a", plan.events())
    admission.ledger.record(charge.charge_id, plan.segment.event(steps=2))
    closed = close_trial_charge(admission.ledger, charge, note="crashed")
    assert closed.spent == plan.events()


def test_released_trials_are_free():
    released = {"mode": "released", "tune.trials": 4, "stage2.epochs": 2}
    with pytest.raises(ConfigError, match=r"stage2\.released_model: diffusion"):
        load_config(None, released)  # the search is over the diffusion model
    cfg = load_config(None, released | {"stage2.released_model": "diffusion"})
    plan = plan_trials(cfg, 400, Adjacency.REPLACE_ONE, DELTA, STAGE1)
    assert plan.events() == [] and not plan.private
    assert plan.report_steps()[-1] == plan.steps


def test_the_noisy_score_has_the_calibrated_noise_and_clips_each_record(fixed_mechanism_keys):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 8)).astype(np.float32), rng.integers(0, 10, 500)
    t, eps = score_draws(MechanismKey.fresh("tune-holdout"), np.arange(500), 8)
    torch.manual_seed(0)
    model = LatentDenoiser(8, 10, 16, 1).eval()

    def scorer(latents, sigma, normaliser=500.0):
        key = MechanismKey.fresh("tune-trial").child("score-noise") if sigma else None
        return HeldOutScore(
            latents,
            y,
            t,
            eps,
            clip=2.0,
            noise_multiplier=sigma,
            normaliser=normaliser,
            noise_key=key,
        )

    clean = scorer(x, None)(model)
    noisy_scorer = scorer(x, 4.0)  # the same fixed draws as clean
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        noisy = [noisy_scorer(model) for _ in range(200)]
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= clean <= 2.0
    # noise std on the mean = multiplier * (clip / 2) / m = 4 * 1 / 500
    assert np.std(noisy) == pytest.approx(4.0 / 500, rel=0.2)
    assert np.mean(noisy) == pytest.approx(clean, abs=4 * (4.0 / 500) / np.sqrt(200))  # unbiased
    huge = scorer(x * 1e3, None)(model)
    assert huge <= 2.0
    # The noisy score divides by the public normaliser, never by the realised count: with a
    # normaliser twice the count, the centred sum's mean halves.
    halved = scorer(x, 1e-9, normaliser=1000.0)(model)
    assert halved - 1.0 == pytest.approx((clean - 1.0) / 2, abs=1e-6)


def test_score_event_is_a_gaussian_release_per_report(private_plan):
    _, plan = private_plan
    assert plan.events()[1] == GaussianEvent(4.0, count=3, stage="tune_score")
