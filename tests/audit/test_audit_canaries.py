"""Canary designs, the canary-augmented training set, attack metrics and CLI refusals (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tdpdm.audit.canaries import CanaryTrainingSet, make_canaries
from tdpdm.audit.metrics import attack_summary, auc, roc_curve, tpr_at_fpr
from tdpdm.audit.run import canary_scores
from tdpdm.cli import EXIT_USER_ERROR, main
from tdpdm.data.private import PrivateAccessError, PrivateTrainingSet
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.ledger import Ledger
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession


def test_add_remove_design_inserts_exactly_the_included_canaries():
    d = make_canaries(64, Adjacency.ADD_REMOVE, seed=1)
    images, labels = d.inserted()
    assert len(d.candidates) == 64 and not d.paired
    assert len(images) == d.included.sum() > 0
    np.testing.assert_array_equal(images, d.candidates[d.included])
    np.testing.assert_array_equal(labels, d.labels[d.included])
    assert set(np.unique(d.candidates)) <= {0, 255}


def test_replace_one_design_always_fills_every_slot():
    d = make_canaries(50, Adjacency.REPLACE_ONE, seed=2)
    images, _ = d.inserted()
    assert d.paired and len(d.candidates) == 100 and len(images) == 50
    for i in range(50):
        twin = d.candidates[i] if d.included[i] else d.candidates[50 + i]
        np.testing.assert_array_equal(images[i], twin)


def test_design_is_seeded_and_coins_are_fair():
    a = make_canaries(2000, Adjacency.ADD_REMOVE, seed=3)
    b = make_canaries(2000, Adjacency.ADD_REMOVE, seed=3)
    np.testing.assert_array_equal(a.candidates, b.candidates)
    np.testing.assert_array_equal(a.included, b.included)
    assert abs(a.included.mean() - 0.5) < 0.05
    with pytest.raises(ValueError, match="at least 2 canaries"):
        make_canaries(1, Adjacency.ADD_REMOVE, seed=0)


def test_canary_training_set_is_read_only_under_a_ledger_charge(tmp_path: Path, shared_datasets):
    design = make_canaries(20, Adjacency.ADD_REMOVE, seed=4)
    base = PrivateTrainingSet(
        "mnist", str(shared_datasets), 100, subset_key=MechanismKey.fresh("subset")
    )
    records = CanaryTrainingSet(base, design)
    inserted = int(design.included.sum())
    assert records.n_records() == 100 + inserted  # the planned (public) count

    ledger = Ledger(str(tmp_path / "ledger.json"))
    ledger.set_budget("mnist", 10.0, 1e-5, "add_remove")
    session = PrivacySession.begin(
        ledger, "mnist", "audit-test", [GaussianEvent(noise_multiplier=5.0, stage="test")]
    )
    session.settle("closed before reading")
    with pytest.raises(PrivateAccessError, match="not open"):
        records.open(session.grant)
    assert records.reads == 0

    session = PrivacySession.begin(
        ledger, "mnist", "audit-test-2", [GaussianEvent(noise_multiplier=5.0, stage="test")]
    )
    images, labels = records.open(session.grant)
    assert records.reads == 1 == base.reads
    # a secret Poisson subset of about 100 records, then exactly the inserted canaries
    assert len(images) == len(labels) and 50 < len(images) - inserted < 150
    np.testing.assert_array_equal(images[-inserted:], design.inserted()[0])
    np.testing.assert_array_equal(labels[-inserted:], design.inserted()[1])


def test_paired_scores_are_differences_of_twins():
    d = make_canaries(3, Adjacency.REPLACE_ONE, seed=5)
    raw = np.array([5.0, 1.0, 2.0, 1.0, 3.0, 0.0])
    np.testing.assert_array_equal(canary_scores(d, raw), [4.0, -2.0, 2.0])
    with pytest.raises(ValueError, match="scores for 6 candidates"):
        canary_scores(d, raw[:3])


def test_auc_matches_counting_pairs_and_roc_has_its_ends():
    rng = np.random.default_rng(0)
    included = rng.random(300) < 0.5
    scores = rng.normal(size=300) + included
    scores[:10] = 0.0  # ties count one half
    pairs = scores[included][:, None] - scores[~included][None, :]
    expected = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    assert auc(scores, included) == pytest.approx(expected)
    fpr, tpr = roc_curve(scores, included)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    perfect = attack_summary(included.astype(float), included)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_fpr"]["0.001"] == 1.0
    assert tpr_at_fpr(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.9, 1.0]), 0.01) == 0.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--canaries", "1"], "at least 2"), (["--scorer", "psychic"], "unknown scorer")],
)
def test_cli_refuses_bad_audits_before_charging(tmp_path: Path, capsys, flags, message):
    ledger = tmp_path / "ledger.json"
    code = main(["audit", "--ledger", str(ledger), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR
    assert message in err and len(err.splitlines()) == 1
    assert not ledger.exists() or json.loads(ledger.read_text()).get("datasets", {}) == {}
