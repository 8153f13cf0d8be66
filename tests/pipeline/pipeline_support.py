"""Helpers for the end-to-end pipeline tests: tiny run settings and an independent accountant."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld import pld_privacy_accountant

EVAL_TRAIN_RECORDS = 3000
EVAL_TEST_RECORDS = 2000
MNIST_TRAIN_RECORDS = 60000


def shared_datasets_root() -> Path:
    env = os.environ.get("TDPDM_SHARED_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def tiny_overrides(root: Path, data_dir: Path, mode: str, epsilon: float = 10.0) -> dict[str, Any]:
    """Settings for a run that takes well under a minute on 2 CPU cores; every path in `root`."""
    return {
        "mode": mode,
        "dataset": "mnist",
        "data_dir": str(data_dir),
        "epsilon": epsilon,
        "delta": 1e-5,
        "subset": 1500,
        "seed": 7,
        "out": str(root / "out"),
        "ledger": str(root / "ledger.json"),
        "cache_dir": str(root / "cache"),
        "progress": False,
        "stage1.epochs": 1,
        "stage2.epochs": 3,
        "stage2.batch_size": 256,
        # Opt-in (it reads real data without noise): these tests check the custodian's metrics.
        "evaluation.enabled": True,
        "evaluation.synthetic_count": 300,
        "evaluation.classifier_epochs": 1,
        "evaluation.evaluator_epochs": 1,
    }


@contextmanager
def small_evaluation_splits():
    """Cap the real splits the *evaluation* reads (not the private training read).

    The evaluator CNN otherwise trains on all 60k real images, minutes on 2 cores; the metric
    code has its own tests. Only `tdpdm.pipeline.load_split` (used by the evaluation alone) is
    wrapped; the records the mechanisms read still come through `PrivateTrainingSet`.
    """
    import tdpdm.pipeline as pipeline

    real = pipeline.load_split

    def capped(dataset: str, data_dir: str, split: str):
        images, labels = real(dataset, data_dir, split)
        n = EVAL_TRAIN_RECORDS if split == "train" else EVAL_TEST_RECORDS
        return images[:n], labels[:n]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "load_split", capped)
        yield


@contextmanager
def one_torch_thread():
    """On a busy 2-core machine OpenMP spin-waits make 2 threads several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pld_add_remove(events: list[dict[str, Any]], delta: float) -> float:
    """dp_accounting PLD (add/remove) of report events, built here from the JSON fields."""
    built = []
    for e in events:
        gaussian = dp_event.GaussianDpEvent(noise_multiplier=e["noise_multiplier"])
        if e["kind"] == "poisson_gaussian":
            step = dp_event.PoissonSampledDpEvent(
                sampling_probability=e["sampling_rate"], event=gaussian
            )
            built.append(dp_event.SelfComposedDpEvent(event=step, count=e["steps"]))
        else:
            built.append(dp_event.SelfComposedDpEvent(event=gaussian, count=e.get("count", 1)))
    accountant = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    accountant.compose(dp_event.ComposedDpEvent(events=built))
    return float(accountant.get_epsilon(delta))


def plausible_poisson_count(count: int, planned: int, total: int = MNIST_TRAIN_RECORDS) -> bool:
    """`--subset m` keeps each of `total` records independently with probability m/total: the
    realised count is Binomial(total, m/total). Six standard deviations: a false alarm about
    once in 10^9 runs, while a subset that ignores the rule (all records, none, twice m) fails."""
    p = planned / total
    return abs(count - planned) <= 6 * math.sqrt(total * p * (1 - p))


def keys_containing(tree: Any, fragment: str, path: str = "") -> list[str]:
    """Dotted paths of every mapping key (at any depth) whose name contains `fragment`."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if fragment in str(key).lower():
                found.append(where)
            found += keys_containing(value, fragment, where)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found += keys_containing(value, fragment, f"{path}[{i}]")
    return found


def int_values(tree: Any) -> list[int]:
    """Every integer value (not bool) anywhere in a JSON tree."""
    if isinstance(tree, dict):
        return [v for value in tree.values() for v in int_values(value)]
    if isinstance(tree, list):
        return [v for value in tree for v in int_values(value)]
    return [tree] if isinstance(tree, int) and not isinstance(tree, bool) else []
