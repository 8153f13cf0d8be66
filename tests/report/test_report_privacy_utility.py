"""The privacy-utility plot from benchmark rows: reading results.jsonl, averaging repeats,
marking the current run, and the benchmarks/plot_privacy_utility.py script."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tdpdm.report.plots import (
    load_result_rows,
    privacy_utility_figure,
    report_point,
    run_privacy_utility_png,
)

ROOT = Path(__file__).resolve().parents[2]


def _row(mode, eps, acc, fd, seed=0, variant=None, dataset="mnist"):
    return {
        "dataset": dataset,
        "mode": mode,
        "variant": variant,
        "epsilon": eps,
        "accuracy": acc,
        "classifier_fd": fd,
        "delta": 1e-5,
        "adjacency": "replace_one" if mode == "released" else "add_remove",
        "seed": seed,
    }


ROWS = [
    _row("private", 9.98, 0.80, 500.0, seed=0),
    _row("private", 9.98, 0.70, 520.0, seed=1),
    _row("private", 1.0, 0.40, 700.0),
    _row("released", 9.99, 0.07, 900.0, variant="diffusion"),
    _row("released", 9.99, 0.85, 300.0, variant="deconvolution"),
    _row("private", 10.0, 0.5, 1.0, dataset="fashion-mnist"),
]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    return path


def test_rows_are_read_per_dataset_and_bad_lines_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "results.jsonl", ROWS)
    assert len(load_result_rows(path)) == len(ROWS)
    assert {r["dataset"] for r in load_result_rows(path, "mnist")} == {"mnist"}
    assert load_result_rows(tmp_path / "missing.jsonl") == []
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"results.jsonl:8: not a JSON row"):
        load_result_rows(path)


def test_repeats_are_averaged_and_variants_get_their_own_line() -> None:
    fig = privacy_utility_figure([r for r in ROWS if r["dataset"] == "mnist"])
    acc = fig.axes[0]
    lines = {line.get_label(): line for line in acc.get_lines()}
    assert set(lines) == {
        "mnist / private",
        "mnist / released (deconvolution)",
        "mnist / released (diffusion)",
    }
    private = lines["mnist / private"]
    assert list(private.get_xdata()) == [1.0, 9.98]
    assert list(private.get_ydata()) == pytest.approx([0.40, 0.75])  # two seeds averaged


def _report(acc: float) -> dict:
    return {
        "dataset": "mnist",
        "mode": "released",
        "config": {"stage2": {"released_model": "deconvolution"}},
        "privacy": {"epsilon": 4.0, "delta": 1e-5, "adjacency": "replace_one"},
        "metrics": {"accuracy": acc, "classifier_fd": 123.0},
    }


def test_current_run_is_starred() -> None:
    point = report_point(_report(0.6))
    assert point["variant"] == "deconvolution" and point["epsilon"] == 4.0
    fig = privacy_utility_figure(ROWS[:3], current=point)
    for ax, value in zip(fig.axes, (0.6, 123.0), strict=True):
        (stars,) = ax.collections
        assert stars.get_offsets().tolist() == [[4.0, value]]
        assert "this run (mnist / released (deconvolution))" in [
            t.get_text() for t in ax.get_legend().get_texts()
        ]


def test_run_figure_without_benchmark_rows_still_shows_the_run(tmp_path: Path) -> None:
    png = run_privacy_utility_png(_report(0.6), tmp_path / "absent.jsonl")
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == (1000, 400)


def test_plot_script_writes_the_readme_figure(tmp_path: Path) -> None:
    results = _write(tmp_path / "results.jsonl", ROWS)
    out = tmp_path / "docs" / "pu.png"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "plot_privacy_utility.py")]
    done = subprocess.run(
        [*cmd, "--results", str(results), "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "from 6 rows" in done.stdout
    with Image.open(out) as im:
        assert im.format == "PNG"
    empty = _write(tmp_path / "empty.jsonl", [])
    done = subprocess.run([*cmd, "--results", str(empty), "--out", str(out)], capture_output=True)
    assert done.returncode == 2 and b"no result rows" in done.stderr
