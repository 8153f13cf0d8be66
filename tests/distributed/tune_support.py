"""Helpers for the stage-2 tuning tests: a tiny run whose search fits in a couple of minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tdpdm_test_support import tiny_run_overrides


def tiny_tune_overrides(root: Path, data_dir: Path, mode: str, trials: int) -> dict[str, Any]:
    """A 400-record run; stage 2 is a few dozen steps per trial over 3 ASHA rungs. The local
    backend: Tune joins the Ray running in the process (`local_ray`), else starts its own."""
    return tiny_run_overrides(
        root,
        data_dir,
        mode,
        epsilon=8.0,
        subset=400,
        seed=3,
        settings={
            "stage1.batch_size": 128,
            "stage1.width": 8,
            "stage1.latent_dim": 8,
            "stage2.epochs": 4,
            "stage2.batch_size": 120,
            "stage2.sampler_steps": 5,
            **({"stage2.released_model": "diffusion"} if mode == "released" else {}),
            "tune.trials": trials,
            "tune.budgeted_trials": 2,
            "tune.max_concurrent_trials": 2,
            "tune.reports": 3,
            "tune.hidden": "[32, 48]",
            "tune.depth": "[1, 2]",
            "tune.lr": "[0.002, 0.004]",
            "evaluation.synthetic_count": 50,
        },
    )
