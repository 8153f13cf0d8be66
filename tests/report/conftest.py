"""Fixtures for the report layer: a valid run report and a small synthetic image set."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tdpdm.report import grid_png_bytes, write_report_html, write_report_json

GOOD_REPORT: dict[str, Any] = {
    "tdpdm_version": "0.1.0",
    "run_id": "run-20250101-abc123",
    "dataset": "mnist",
    "mode": "private",
    "n_records": 60000,
    "seed": 7,
    "wall_time_s": 2714.3,
    "hardware": {
        "device": "cpu",
        "device_name": "cpu",
        "cpu": "Test CPU @ 2.0GHz",
        "cpu_count": 2,
        "torch": "2.5.1+cpu",
        "python": "3.11.2",
        "platform": "Linux-6.1-x86_64",
    },
    "privacy": {
        "epsilon": 9.98712,
        "delta": 1e-5,
        "adjacency": "add_remove",
        "accountant": "prv (upper bound)",
        "events": [
            {
                "kind": "poisson_gaussian",
                "stage": "encoder",
                "noise_multiplier": 1.39,
                "sampling_rate": 2048 / 60000,
                "steps": 147,
            },
            {
                "kind": "poisson_gaussian",
                "stage": "diffusion",
                "noise_multiplier": 0.76,
                "sampling_rate": 2048 / 60000,
                "steps": 586,
                "clip_norm": 1.0,
            },
            {"kind": "gaussian", "stage": "class_counts", "noise_multiplier": 50.0},
        ],
        "budget": {
            "epsilon": 20.0,
            "delta": 1e-5,
            "adjacency": "add_remove",
            "spent_epsilon_after_run": 9.98712,
        },
        "statement": (
            "Anyone who sees the synthetic images learns almost nothing about whether any one "
            "person's record was in the training data."
        ),
        "not_covered": ["Metrics computed on the real data.", "The evaluation classifier."],
    },
    "metrics": {
        "accuracy": 0.9712,
        "inception_score": 9.12,
        "classifier_fd": 3.456,
        "fid": None,
        "accuracy_real_train": 0.986,
    },
    "metrics_note": "Metrics read the real data; custodian-only, not DP.",
    "config": {"stage1": {"epochs": 5, "batch_size": 2048}, "note": "plain"},
    "stages": [
        {"name": "encode", "wall_time_s": 313.0, "details": {"epsilon": 1.5}},
        {"name": "diffuse", "wall_time_s": 2401.3, "details": {}},
    ],
    "artifacts": {
        "synthetic": "synthetic/part-0.parquet",
        "samples_png": "samples.png",
        "report_html": "report.html",
    },
}


@pytest.fixture
def good_report() -> dict[str, Any]:
    """A fresh deep copy, so a test may break it without touching others."""
    return copy.deepcopy(GOOD_REPORT)


@pytest.fixture
def sample_images() -> tuple[np.ndarray, np.ndarray]:
    """Fake 28x28 digits: a bright square whose position encodes the class; class 9 has only 3."""
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.repeat(np.arange(9), 12), np.full(3, 9)])
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(labels.size, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + (c // 5) * 12, 2 + (c % 5) * 5
        images[i, r : r + 10, col : col + 5] = 255
    return images, labels


@pytest.fixture
def grid_png(sample_images: tuple[np.ndarray, np.ndarray]) -> bytes:
    images, labels = sample_images
    return grid_png_bytes(images, labels)


@pytest.fixture
def written_report(tmp_path: Path, good_report: dict[str, Any], grid_png: bytes) -> Path:
    """A run directory holding report.json, samples.png and report.html; returns the HTML path."""
    from tdpdm.report.plots import privacy_utility_png

    rows = [
        {
            "dataset": "mnist",
            "mode": m,
            "epsilon": e,
            "accuracy": a,
            "classifier_fd": fd,
            "delta": 1e-5,
            "adjacency": "add_remove",
        }
        for m, pts in {
            "private": [(1.0, 0.80, 20.0), (10.0, 0.97, 3.4)],
            "released": [(1.0, 0.10, 90.0), (10.0, 0.30, 60.0)],
        }.items()
        for e, a, fd in pts
    ]
    write_report_json(good_report, tmp_path / "report.json")
    (tmp_path / "samples.png").write_bytes(grid_png)
    html = tmp_path / "report.html"
    write_report_html(
        good_report, html, grid_png, extra_images={"Privacy-utility": privacy_utility_png(rows)}
    )
    return html
