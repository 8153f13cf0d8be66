"""End-to-end audit of a `private`-mode run: the audit has power, the mechanism holds.

Scorer: how much training lowered the autoencoder's reconstruction loss on each canary (against
the public initial weights). The canaries are random binary images: the encoder maps them all
close together, so the decoder learns the *average of the inserted ones* there, and a canary
that went in correlates with that average. With DP-SGD's noise switched off (test-only fault
injection) that is enough to refute the claimed epsilon; with the real noise it is not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_support import audit_overrides, summary

from tdpdm.audit.run import run_audit
from tdpdm.config import load_config
from tdpdm.privacy.ledger import Ledger

CANARIES = 100
CLAIMED = 1.0

pytestmark = pytest.mark.slow


def _audit(tmp_path: Path, data_dir: Path):
    cfg = load_config(None, audit_overrides(tmp_path, data_dir, "private", CLAIMED))
    return cfg, run_audit(cfg, canaries=CANARIES, confidence=0.95, log=lambda m: None)


def test_private_audit_with_noise_off_refutes_the_claim(
    tmp_path: Path, shared_datasets: Path, noise_off, fixed_mechanism_keys, one_torch_thread
):
    _, result = _audit(tmp_path, shared_datasets)
    a = result.audit
    assert a["claimed"]["adjacency"] == "add_remove"
    assert a["scorer"]["name"] == "reconstruction_gain"
    assert result.claimed == pytest.approx(CLAIMED, abs=0.05)
    assert a["attack"]["auc"] > 0.85
    assert result.lower_bound > result.claimed, a["bound"]
    assert a["verdict"].startswith("REFUTED")
    print(summary("private, noise off", a))


def test_private_audit_with_the_real_mechanism_stays_below_the_claim(
    tmp_path: Path, shared_datasets: Path, fixed_mechanism_keys, one_torch_thread
):
    cfg, result = _audit(tmp_path, shared_datasets)
    a = result.audit
    assert result.lower_bound < result.claimed, a["bound"]
    assert a["verdict"].startswith("consistent")
    # charged like any run, for the actual record count (the inserted canaries included)
    assert a["n_records"] == 500 + a["canaries"]["inserted"]
    assert Ledger(cfg.ledger).spent("mnist").epsilon == pytest.approx(result.claimed, rel=1e-6)
    assert (Path(cfg.out) / "audit.png").stat().st_size > 1000
    print(summary("private, real noise", a))
