"""Stage-2 tuning trials without Ray: secret per-record roles, per-trial keys, and the admission
cap with every admitted trial charged its full plan (issue 11)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from tdpdm.config import Stage2Config, TuneConfig
from tdpdm.distributed import trial as trial_mod
from tdpdm.distributed.trial import (
    COMPLETED,
    REFUSED,
    TrialSetup,
    holdout_roles,
    run_trial,
    score_draws,
)
from tdpdm.distributed.trial_budget import TrialAdmission, TrialPlan, trial_charges
from tdpdm.models.diffusion import LatentDenoiser
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import PoissonGaussianEvent
from tdpdm.privacy.ledger import SETTLED, Ledger
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dpsgd import DPSGDPlan
from tdpdm.stages.latents_io import write_latents

DELTA = 1e-5
DIM, CLASSES = 4, 10
STAGE1 = [PoissonGaussianEvent(3.0, 0.3, 4, "encoder")]
STAGE2 = Stage2Config(hidden=16, depth=1, epochs=1, batch_size=60, noise_draws=1)


def _plan(n: int, steps: int = 6, reports: int = 3) -> TrialPlan:
    """A hand-made private trial plan over the expected sizes (no calibration: quick)."""
    n_holdout = round(0.1 * n)
    n_train = n - n_holdout
    segment = DPSGDPlan("diffusion", 3.0, STAGE2.batch_size / n_train, steps, 1.0, 60)
    return TrialPlan(steps, reports, n_train, n_holdout, segment, 4.0)


def _setup(tmp_path: Path, n: int, plan: TrialPlan, run_id: str = "run1", **kw) -> TrialSetup:
    return TrialSetup(
        run_id=run_id,
        dataset="mnist",
        mode="private",
        ledger=str(tmp_path / "ledger.json"),
        latents_uri=str(tmp_path / "latents.parquet"),
        n_records=n,
        num_classes=CLASSES,
        stage2=STAGE2,
        tune=TuneConfig(trials=5, budgeted_trials=2, reports=plan.reports),
        plan=plan,
        work_dir=str(tmp_path / "work"),
        holdout_key=kw.pop("holdout_key", None) or MechanismKey.fresh("tune-holdout"),
        seed=3,
        **kw,
    )


def _ledger(tmp_path: Path, epsilon: float = 1000.0) -> Ledger:
    ledger = Ledger(str(tmp_path / "ledger.json"))
    ledger.set_budget("mnist", epsilon, DELTA, "add_remove")
    return ledger


def _direct_admit(ledger: Ledger):
    return lambda job_id, planned: ledger.reserve("mnist", job_id, planned)


def _records(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Record i's latent starts with i, so a row names its record."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    x[:, 0] = np.arange(n)
    return x, np.arange(n) % CLASSES


class _Spy:
    """Stands in for `train_diffusion`: records what it got and reports like the real loop
    (the same fixed model at every step, every step recorded on the trial's session)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, latents, labels, cfg, *, plan, session, seed, key=None, on_ema, **_):
        self.calls.append({"latents": latents.copy(), "seed": seed, "key": key})
        torch.manual_seed(0)
        model = LatentDenoiser(latents.shape[1], CLASSES, 8, 1).eval()
        for step in range(1, plan.steps + 1):
            on_ema(step, model)
        session.record(plan.event())
        return model


class _ScoreSpy(trial_mod.HeldOutScore):
    made: ClassVar[list[_ScoreSpy]] = []

    def __init__(self, latents, labels, t, eps, **kw) -> None:
        super().__init__(latents, labels, t, eps, **kw)
        self.noise_key = kw["noise_key"]
        _ScoreSpy.made.append(self)


@pytest.fixture
def spies(monkeypatch, tmp_path):
    """In-memory records (rows in their own order) and spies on training and scoring."""
    spy = _Spy()
    _ScoreSpy.made = []
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def open_latents(uri, session):
        assert session is not None and session.grant.is_active()  # only under an open charge
        return data[uri]

    monkeypatch.setattr(trial_mod, "train_diffusion", spy)
    monkeypatch.setattr(trial_mod, "HeldOutScore", _ScoreSpy)
    monkeypatch.setattr(trial_mod, "open_latents", open_latents)
    return spy, data


def test_adding_a_record_moves_no_other_record_between_train_and_held_out(
    tmp_path, fixed_mechanism_keys, spies
):
    spy, data = spies
    ledger = _ledger(tmp_path)
    n = 400
    key = MechanismKey.fresh("tune-holdout")  # one run's secret key, on both data sets
    reports: list[dict[str, Any]] = []
    for size in (n, n + 1):  # D, and D plus record n; the plan (public) is the same
        setup = _setup(tmp_path, n, _plan(n), run_id=f"run{size}", holdout_key=key)
        setup = dataclasses.replace(setup, latents_uri=f"mem://{size}")
        data[setup.latents_uri] = _records(size)
        run_trial({}, setup, "a", _direct_admit(ledger), reports.append)
    trained = [set(c["latents"][:, 0].astype(int)) for c in spy.calls]
    held = [set(s.x[:, 0].numpy().astype(int)) for s in _ScoreSpy.made]
    assert trained[1] - {n} == trained[0] and held[1] - {n} == held[0]
    assert trained[0].isdisjoint(held[0]) and trained[0] | held[0] == set(range(n))
    # The score's fixed draws of a held-out record are its own: the same in both data sets.
    common = sorted(held[0])
    rows = [
        {int(r): i for i, r in enumerate(s.x[:, 0].numpy().astype(int))} for s in _ScoreSpy.made
    ]
    for attr in ("t", "eps"):
        a, b = (getattr(s, attr) for s in _ScoreSpy.made)
        for r in common:
            assert torch.equal(a[rows[0][r]], b[rows[1][r]])
    # The held-out fraction is about right, per independent record draws.
    roles = holdout_roles(key, 20_000, 0.1)
    assert abs(roles.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 20_000)
    assert np.array_equal(holdout_roles(key, 20_001, 0.1)[:20_000], roles)
    # Nothing the trial reports carries the realised held-out count.
    assert all(set(r) <= {"job_id", "trial_id", "status", "score", "step", "rung"} for r in reports)


def test_score_draws_of_a_record_never_depend_on_the_others(fixed_mechanism_keys):
    key = MechanismKey.fresh("tune-holdout")
    t_all, eps_all = score_draws(key, np.array([3, 7, 11]), DIM)
    t_one, eps_one = score_draws(key, np.array([7]), DIM)
    assert torch.equal(t_all[1], t_one[0]) and torch.equal(eps_all[1], eps_one[0])
    assert not torch.equal(t_all[0], t_all[1])


def test_trials_draw_their_own_keys_whatever_the_seed(tmp_path, spies):
    """Real OS entropy: the same trial id under the same `--seed` in two runs, and two trials
    of one run, get different DP-SGD keys and score noise; within a trial the score noise and
    the DP-SGD randomness come from different keys."""
    spy, data = spies
    ledger = _ledger(tmp_path)
    n = 400
    data[str(tmp_path / "latents.parquet")] = _records(n)
    key = MechanismKey.fresh("tune-holdout")  # the same held-out part and draws everywhere
    scores: dict[str, list[float]] = {}
    for run_id, trial_id in (("run1", "a"), ("run2", "a"), ("run1", "b")):
        setup = _setup(tmp_path, n, _plan(n), run_id=run_id, holdout_key=key)

        def report(result, name=f"{run_id}/{trial_id}"):
            scores.setdefault(name, []).append(result["score"])

        run_trial({}, setup, trial_id, _direct_admit(ledger), report)
    # The same fixed model on the same held-out records: scores differ only by their noise.
    assert scores["run1/a"] != scores["run2/a"] != scores["run1/b"] != scores["run1/a"]
    assert spy.calls[0]["seed"] == spy.calls[1]["seed"]  # public initial weights: the seed's

    def stream(k: MechanismKey) -> tuple[float, ...]:
        return tuple(k.numpy().random(4))

    dpsgd = [stream(c["key"]) for c in spy.calls]
    noise = [stream(s.noise_key) for s in _ScoreSpy.made]
    assert len(set(dpsgd)) == 3 and len(set(noise)) == 3
    assert not set(dpsgd) & set(noise)
    for c, s in zip(spy.calls, _ScoreSpy.made, strict=True):
        assert "secret" in repr(c["key"]) and "secret" in repr(s.noise_key)
        first = torch.randn(3, generator=c["key"].torch())
        assert not torch.equal(first, torch.randn(3, generator=s.noise_key.torch()))


def test_early_stops_free_nothing_and_exactly_the_budgeted_trials_run(tmp_path):
    """Five trials asked, three budgeted; the scheduler stops the first two at their first
    report (as Tune stops a trial inside `report`), which once freed room for more trials.
    Exactly three are admitted, each is charged its full plan, the rest are refused before
    reading, and the run (stage 1 + every trial's events) meets its target."""
    n = 400
    plan = _plan(n, steps=8, reports=4)
    budgeted = [*STAGE1, *plan.events() * 3]
    target = compute_epsilon(budgeted, DELTA, Adjacency.ADD_REMOVE).epsilon
    ledger = _ledger(tmp_path, epsilon=50.0)
    ledger.reserve("mnist", "run1", STAGE1)
    x, y = _records(n + 17)  # a Poisson subset: more rows than planned (private)
    write_latents(str(tmp_path / "latents.parquet"), x, y, {}, seed=0, private=True)
    admission = TrialAdmission(
        str(tmp_path / "ledger.json"),
        "mnist",
        "run1",
        target + 1e-6,
        DELTA,
        "add_remove",
        STAGE1,
        3,
    )
    setup = _setup(tmp_path, n, plan)
    results: dict[str, list[dict[str, Any]]] = {}
    for trial_id in "abcde":

        def report(result, trial_id=trial_id):
            results.setdefault(trial_id, []).append(result)
            if trial_id in "ab":
                raise SystemExit  # ASHA stops "a" and "b" at their first rung

        try:
            run_trial({"lr": 0.004}, setup, trial_id, admission.reserve, report)
        except SystemExit:
            assert trial_id in "ab"
    assert [len(results[k]) for k in "abc"] == [1, 1, 4]
    assert results["c"][-1]["status"] == COMPLETED
    for trial_id in "de":
        (refusal,) = results[trial_id]
        assert refusal["status"] == REFUSED and "3 budgeted trial(s)" in refusal["reason"]
    charges = trial_charges(ledger, "mnist", "run1")
    assert [c.job_id for c in charges] == [f"run1-trial-{k}" for k in "abc"]
    for c in charges:
        assert c.status == SETTLED and c.spent == plan.events() and "full plan" in c.note
    spent = [*STAGE1, *(e for c in charges for e in c.spent)]
    assert spent == budgeted  # exactly the composition the calibration fixed in advance
    assert compute_epsilon(spent, DELTA, Adjacency.ADD_REMOVE).epsilon <= target + 1e-6
    assert (tmp_path / "work/tune/c/diffusion.pt").is_file()  # custodian-private work dir
    # A stopped trial keeps the model of the rung it reached: `select_trial` may pick it when
    # ASHA stops every trial; refused trials read nothing and leave nothing.
    assert (tmp_path / "work/tune/a/diffusion.pt").is_file()
    assert not (tmp_path / "work/tune/d").exists()


def test_a_trial_setup_never_prints_its_secret_key(fixed_mechanism_keys, tmp_path):
    setup = _setup(tmp_path, 400, _plan(400))
    secret = setup.holdout_key._key
    assert str(secret) not in repr(setup) and hex(secret)[2:] not in repr(setup)
    assert dataclasses.replace(setup).holdout_key == setup.holdout_key  # it travels intact
