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
