"""Helpers for the stage-2 tuning tests: a tiny run whose search fits in a couple of minutes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def shared_datasets_root() -> Path:
    env = os.environ.get("TDPDM_SHARED_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def tiny_tune_overrides(root: Path, data_dir: Path, mode: str, trials: int) -> dict[str, Any]:
    """A 400-record run; stage 2 is a few dozen steps per trial over 3 ASHA rungs."""
    return {
        "mode": mode,
        "dataset": "mnist",
        "data_dir": str(data_dir),
        "epsilon": 8.0,
        "delta": 1e-5,
        "subset": 400,
        "seed": 3,
        "out": str(root / "out"),
        "ledger": str(root / "ledger.json"),
        "cache_dir": str(root / "cache"),
        "progress": False,
        "distributed.backend": "local",
        "stage1.epochs": 1,
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
        "evaluation.enabled": False,
        "evaluation.synthetic_count": 50,
    }
