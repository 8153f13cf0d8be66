"""benchmarks/utility.py: the row it records, its GPU gate, and that it never imports Ray."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "utility.py"
FIELDS = [
    "dataset",
    "epsilon",
    "delta",
    "mode",
    "seed",
    "accuracy",
    "inception_score",
    "classifier_fd",
    "fid",
    "wall_time_s",
    "pipeline_time_s",
    "hardware",
    "commit",
    "variant",
    "notes",
]


def _utility():
    spec = importlib.util.spec_from_file_location("bench_utility", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(mode: str, device: str, device_name: str) -> dict:
    events = [
        {
            "kind": "poisson_gaussian",
            "stage": "encoder",
            "noise_multiplier": 1.7,
            "sampling_rate": 0.1,
            "steps": 59,
        },
        {"kind": "gaussian", "stage": "latent_release", "noise_multiplier": 1.12},
    ]
    return {
        "dataset": "mnist",
        "mode": mode,
        "n_records": 60000,
        "seed": 2,
        "wall_time_s": 812.4,
        "stages": [
            {"name": "stage1", "wall_time_s": 600.0},
            {"name": "evaluate", "wall_time_s": 200.0},
        ],
        "hardware": {"device": device, "device_name": device_name, "cpu_count": 16},
        "privacy": {
            "epsilon": 9.99,
            "target_epsilon": 10.0,
            "delta": 1e-5,
            "adjacency": "replace_one",
            "events": events,
        },
        "metrics": {"accuracy": 0.91, "inception_score": 8.1, "classifier_fd": 40.0, "fid": None},
        "config": {
            "evaluation": {"synthetic_count": 60000},
            "stage1": {"latent_dim": 8},
            "release": {"label_scale": 0.6},
            "stage2": {"released_model": "deconvolution", "mixture_components": 2},
        },
    }


def test_row_has_the_protocol_fields_and_the_gpu_name() -> None:
    utility = _utility()
    row = utility.row_of(_report("released", "cuda", "NVIDIA H100 80GB HBM3"), "a note")
    assert set(FIELDS) <= set(row)
    assert row["hardware"] == "NVIDIA H100 80GB HBM3"
    assert row["accuracy"] == 0.91 and row["fid"] is None and row["seed"] == 2
    assert row["pipeline_time_s"] == pytest.approx(612.4)  # the evaluation's 200 s left out
    assert row["variant"] == "deconvolution"
    assert "deconvolved mixture (2/class)" in row["notes"] and "a note" in row["notes"]
    line = utility.markdown_row(row)
    assert line.startswith("| mnist | released | 9.990 | 1e-05 | replace_one | 60000 | 60000 |")
    assert "| 91.00 |" in line and "latent_release:gaussian(sigma=1.12)" in line
    cpu = utility.row_of(_report("private", "cpu", "Xeon"))
    assert cpu["hardware"] == "CPU x16 (Xeon)" and cpu["variant"] is None
    moments = _report("private", "cpu", "Xeon")
    moments["config"]["stage2"]["private_model"] = "dp-moments"
    assert utility.row_of(moments)["variant"] == "dp-moments"  # its own line on the plot
    mixture = _report("private", "cpu", "Xeon")
    mixture["config"]["stage2"] |= {"private_model": "dp-mixture", "mixture_components": 4,
                                    "mixture_covariance": "component"}  # fmt: skip
    notes = utility.row_of(mixture)["notes"]
    assert "stage2=dp-mixture (4/class" in notes and "per component" in notes
    assert "diffusion" not in notes  # once labelled DP-SGD diffusion
    assert "centred" not in notes and "centred" not in utility.row_of(moments)["notes"]
    moments["config"]["stage2"] |= {"moments_centred": True, "moments_clip_ratio": 2.5}
    assert "radius 1, centred clip ratio 2.5)" in utility.row_of(moments)["notes"]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_full_refuses_without_a_gpu_before_running_anything() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--full"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "torch sees no CUDA device" in done.stderr


def test_benchmark_never_imports_ray() -> None:
    code = (
        "import importlib.util, sys;"
        f"spec = importlib.util.spec_from_file_location('u', {str(SCRIPT)!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_cpu_table_summary_averages_seeds_and_skips_other_rows(tmp_path) -> None:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_table_summary.py"
    spec = importlib.util.spec_from_file_location("bench_cpu_summary", path)
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    base = {"mode": "private", "n_records": 60000, "synthetic_count": 60000,
            "notes": "stage2=dp-moments (full covariance)", "hardware": "CPU x2 (EPYC)",
            "dataset": "mnist", "target_epsilon": 10.0, "inception_score": 5.0,
            "classifier_fd": 100.0, "pipeline_time_s": 300.0, "commit": "abc"}  # fmt: skip
    rows = [base | {"seed": s, "accuracy": a} for s, a in ((0, 0.94), (1, 0.95), (2, 0.96))]
    rows.append(base | {"seed": 0, "accuracy": 0.10, "n_records": 10000})  # a subset run
    rows.append(base | {"seed": 0, "accuracy": 0.10, "notes": "stage2=DP-SGD diffusion"})
    kept = [r for r in rows if summary.is_cpu_row(r, None)]
    assert len(kept) == 3 and not summary.is_cpu_row(rows[0], {"other"})
    mixture = base | {"notes": "stage2=dp-mixture (8/class, 2 rounds)"}
    assert summary.is_cpu_row(mixture, {"abc"})
    line = summary.summary(kept).splitlines()[2]
    assert line.startswith("| mnist | 10 | 0,1,2 | 95.00 ± 1.00 | 96.0 |")
