"""Helpers for the audit tests (a uniquely named module: `conftest` names clash across folders)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdpdm_test_support import tiny_run_overrides


def seed_derived_key() -> Callable[[int, str], int]:
    """`seed_derived_key` of tests/mechanism_keys.py (the flaw of issue 11)."""
    from mechanism_keys import seed_derived_key as derive

    return derive


def audit_overrides(root: Path, data_dir: Path, mode: str, epsilon: float) -> dict[str, Any]:
    """A small audited run: 500 real records, few steps, no evaluation, in this process."""
    stage1 = (
        {"stage1.epochs": 40, "stage1.batch_size": 64}
        if mode == "private"
        else {"stage1.epochs": 2, "stage1.batch_size": 128}
    )
    return tiny_run_overrides(
        root,
        data_dir,
        mode,
        epsilon=epsilon,
        subset=500,
        seed=5,
        out="audit",
        settings={
            "stage2.epochs": 1,
            "stage2.batch_size": 256,
            "stage2.sampler_steps": 5,
            "evaluation.synthetic_count": 20,
            **stage1,
        },
    )


def replay_of_a_finished_audit(
    overrides: dict[str, Any], audit: dict[str, Any], confidence: float = 0.95
) -> dict[str, Any]:
    """The replay adversary (`ReplayScorer` with the seed derivation of issue 11) scored on the
    published artefacts of an audit already run with `overrides` (its `audit.json` as `audit`):
    the same canary design (rebuilt from the public seed, checked against the audit's coins),
    the same one-run bound. One training run then serves both attacks."""
    from tdpdm.audit.canaries import make_canaries
    from tdpdm.audit.metrics import auc
    from tdpdm.audit.run import canary_scores
    from tdpdm.audit.scoring import ReplayScorer, RunArtifacts
    from tdpdm.config import load_config
    from tdpdm.data import storage
    from tdpdm.data.catalog import get_spec
    from tdpdm.privacy.adjacency import Adjacency
    from tdpdm.privacy.audit_bound import audit_lower_bound

    cfg = load_config(None, overrides)
    spec = get_spec(cfg.dataset)
    design = make_canaries(
        audit["canaries"]["m"],
        Adjacency(audit["claimed"]["adjacency"]),
        seed=cfg.seed,
        shape=spec.image_shape,
        num_classes=spec.num_classes,
    )
    assert design.included.tolist() == audit["scores"]["included"]  # the audit's own coins
    scorer = ReplayScorer(seed_derived_key())
    raw = scorer(RunArtifacts(cfg, storage.join(cfg.out, "run")), design.candidates, design.labels)
    scores = canary_scores(design, raw)
    bound = audit_lower_bound(
        scores, design.included, delta=audit["claimed"]["delta"], confidence=confidence
    )
    return {
        "details": scorer.details,
        "lower_bound": bound.epsilon_lower_bound,
        "auc": auc(scores, design.included),
    }


def summary(label: str, audit: dict[str, Any]) -> str:
    """One line with the figures the audit tests record (run pytest with -s to see them)."""
    bound = audit["bound"]["best"]
    return (
        f"{label}: claimed {audit['claimed']['epsilon']:.3f}, audited "
        f"{audit['bound']['epsilon_lower_bound']:.3f} ({bound['correct']}/{bound['guesses']} "
        f"guesses right), AUC {audit['attack']['auc']:.3f}, TPR@1%FPR "
        f"{audit['attack']['tpr_at_fpr']['0.01']:.3f}"
        + (
            f", replay rows matched {details['rows_matched']:.3f} ({details['derivation']})"
            if (details := audit["scorer"].get("details")) and "rows_matched" in details
            else ""
        )
    )
