"""Privacy-utility figure: a readable PNG from rows, tolerant of missing metrics."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tdpdm.report.plots import privacy_utility_figure, privacy_utility_plot, privacy_utility_png

ROWS = [
    {
        "dataset": "mnist",
        "mode": "private",
        "epsilon": 10.0,
        "accuracy": 0.97,
        "classifier_fd": 3.1,
        "delta": 1e-5,
        "adjacency": "add_remove",
    },
    {
        "dataset": "mnist",
        "mode": "private",
        "epsilon": 1.0,
        "accuracy": 0.8,
        "classifier_fd": 20.0,
        "delta": 1e-5,
        "adjacency": "add_remove",
    },
    {
        "dataset": "mnist",
        "mode": "released",
        "epsilon": 1.0,
        "accuracy": 0.1,
        "classifier_fd": None,
        "delta": 1e-5,
        "adjacency": "add_remove",
    },
    {
        "dataset": "fashion_mnist",
        "mode": "private",
        "epsilon": 10.0,
        "accuracy": None,
        "classifier_fd": 9.0,
        "delta": 1e-5,
        "adjacency": "add_remove",
    },
]


def test_plot_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "pu.png"
    privacy_utility_plot(ROWS, path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (1000, 400)


def test_figure_has_log_x_and_a_line_per_series() -> None:
    fig = privacy_utility_figure(ROWS)
    acc, fd = fig.axes
    assert acc.get_xscale() == fd.get_xscale() == "log"
    assert sorted(line.get_label() for line in acc.get_lines()) == [
        "mnist / private",
        "mnist / released",
    ]
    assert sorted(line.get_label() for line in fd.get_lines()) == [
        "fashion_mnist / private",
        "mnist / private",
    ]
    xs = list(acc.get_lines()[0].get_xdata())
    assert xs == sorted(xs)
    assert "delta = 1e-05" in fig.get_suptitle()


def test_png_bytes_and_empty_rows() -> None:
    with Image.open(io.BytesIO(privacy_utility_png(ROWS[:1]))) as im:
        assert im.format == "PNG"
    with pytest.raises(ValueError):
        privacy_utility_plot([], "unused.png")


def test_a_long_legend_stays_inside_the_figure() -> None:
    """Many series with long variant names: every legend entry is drawn inside the canvas."""
    rows = [
        {
            "dataset": "fashion-mnist" if i % 2 else "mnist",
            "mode": "released",
            "variant": f"dpsgd-autoencoder, label-conditioned decoder + deconvolution, seed {i}",
            "epsilon": eps,
            "accuracy": 0.1 * (i % 9),
            "delta": 1e-5,
            "adjacency": "replace_one",
        }
        for i in range(24)
        for eps in (1.0, 10.0)
    ]
    fig = privacy_utility_figure(rows)
    fig.canvas.draw()
    canvas = fig.bbox
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert box.x0 >= canvas.x0 and box.x1 <= canvas.x1, (box, canvas)
    assert box.y0 >= canvas.y0 and box.y1 <= canvas.y1, (box, canvas)
