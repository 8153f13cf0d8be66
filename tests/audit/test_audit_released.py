"""End-to-end audit of a `released`-mode run: the audit has power, the mechanism holds.

Scorer: distance from each canary's encoding to the nearest released latent row (paired
replace-one design, so the score is A_i's closeness minus its twin's). With the noise switched
off (test-only fault injection) a member's row *is* its encoding and the audit must refute the
claimed epsilon; with the real release noise the lower bound must stay below the claim, and the
replay adversary (tests/audit/test_audit_replay.py) scored on that same run is at chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_support import audit_overrides, replay_of_a_finished_audit, summary

from tdpdm.audit.run import run_audit
from tdpdm.cli import main
from tdpdm.config import load_config
from tdpdm.privacy.ledger import Ledger

CANARIES = 200
CLAIMED = 2.0

pytestmark = pytest.mark.slow


def _audit(tmp_path: Path, data_dir: Path):
    cfg = load_config(None, audit_overrides(tmp_path, data_dir, "released", CLAIMED))
    return cfg, run_audit(cfg, canaries=CANARIES, confidence=0.95, log=lambda m: None)


def test_released_audit_with_noise_off_refutes_the_claim(
    tmp_path: Path, shared_datasets: Path, noise_off, fixed_mechanism_keys, one_torch_thread
):
    _, result = _audit(tmp_path, shared_datasets)
    a = result.audit
    assert a["claimed"]["adjacency"] == "replace_one"
    assert result.claimed == pytest.approx(CLAIMED, abs=0.05)
    assert a["attack"]["auc"] == 1.0
    assert result.lower_bound > result.claimed, a["bound"]
    assert a["verdict"].startswith("REFUTED")
    print(summary("released, noise off", a))


def test_released_audit_with_the_real_mechanism_stays_below_the_claim(
    tmp_path: Path, shared_datasets: Path, one_torch_thread, capsys
):
    """Through the command line, as a user runs it, with the product's own keys (fresh OS
    entropy per mechanism). The same run is then attacked by the replay adversary: the published
    seed tells it nothing, so it does no better than guessing."""
    overrides = audit_overrides(tmp_path, shared_datasets, "released", CLAIMED)
    flags = [f"--set={key}={value}" for key, value in overrides.items()]
    code = main(["audit", *flags, "--canaries", str(CANARIES), "--confidence", "0.95"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("consistent: audited lower bound")
    a = json.loads((Path(overrides["out"]) / "audit.json").read_text())
    claimed, lower = a["claimed"]["epsilon"], a["bound"]["epsilon_lower_bound"]
    assert lower < claimed, a["bound"]
    assert claimed == pytest.approx(CLAIMED, abs=0.05)
    # the audit run was charged like any run: the ledger holds exactly the claimed guarantee
    spent = Ledger(overrides["ledger"]).spent("mnist")
    assert spent.epsilon == pytest.approx(claimed, rel=1e-6)
    assert a["n_records"] == 500 + CANARIES  # every slot filled: the count is public
    html = (Path(overrides["out"]) / "audit.html").read_text()
    assert "claimed epsilon" in html and "data:image/png;base64," in html
    with capsys.disabled():
        print(summary("released, real noise", a))

    replay = replay_of_a_finished_audit(overrides, a)
    assert replay["details"]["rows_matched"] == 0.0
    assert replay["lower_bound"] < claimed
    assert 0.35 < replay["auc"] < 0.65
    with capsys.disabled():
        print(f"replay vs fresh keys (same run): {replay}")
