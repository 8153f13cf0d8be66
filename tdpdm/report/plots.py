"""Privacy-utility curves: what each epsilon buys, per mode and data set.

Figures are built on matplotlib's object API with an explicit Agg canvas (never pyplot), so
plotting works headless, in threads and in Ray workers, and never touches global state.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANELS = (
    ("accuracy", "downstream CNN accuracy\n(real test split)"),
    ("classifier_fd", "Frechet distance, classifier features\n(lower is better)"),
)
LEGEND_ROW_INCHES = 0.2  # a "small" legend entry's height with its spacing, at 100 dpi


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _series_name(row: Mapping[str, Any]) -> str:
    name = f"{row.get('dataset', '?')} / {row.get('mode', '?')}"
    return f"{name} ({row['variant']})" if row.get("variant") else name


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> dict[str, list[tuple[float, float]]]:
    """Points (epsilon, mean value) per "dataset / mode (variant)" line: rows at the same
    epsilon (seeds, repeats) are averaged; rows lacking epsilon or the value are skipped."""
    groups: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        eps, val = _finite(row.get("epsilon")), _finite(row.get(key))
        if eps is None or eps <= 0 or val is None:
            continue
        at = groups.setdefault(_series_name(row), {})
        at.setdefault(round(eps, 2), []).append(val)
    return {
        name: sorted((eps, sum(vals) / len(vals)) for eps, vals in at.items())
        for name, at in sorted(groups.items())
    }


def load_result_rows(path: str | PathLike[str], dataset: str | None = None) -> list[dict]:
    """Rows of a benchmark `results.jsonl` (one JSON object a line), optionally one data set's.
    A missing file gives no rows; a malformed line is an error naming its line number."""
    file = Path(path)
    if not file.is_file():
        return []
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}:{number}: not a JSON row ({err.msg})") from None
        if dataset is None or row.get("dataset") == dataset:
            rows.append(row)
    return rows


def _subtitle(rows: list[Mapping[str, Any]]) -> str:
    deltas = {row.get("delta") for row in rows}
    adjs = {row.get("adjacency") for row in rows}
    parts = []
    if len(deltas) == 1 and (d := _finite(next(iter(deltas)))) is not None:
        parts.append(f"delta = {d:.3g}")
    if len(adjs) == 1 and (a := next(iter(adjs))):
        parts.append(f"adjacency: {str(a).replace('_', '/')}")
    return ", ".join(parts)


def privacy_utility_figure(
    rows: list[Mapping[str, Any]], current: Mapping[str, Any] | None = None
) -> Figure:
    """Two panels (accuracy, classifier FD) against epsilon on a log axis, a line per mode.

    Each row needs ``epsilon`` and may carry ``accuracy``, ``classifier_fd``, ``dataset``,
    ``mode``, ``variant``, ``delta`` and ``adjacency``; metrics that are None are left out of
    their panel. ``current`` (a row of the same shape) is drawn as a star: "this run".
    """
    rows = list(rows)
    if not rows and current is None:
        raise ValueError("privacy_utility_figure needs at least one row")
    names = {_series_name(r) for r in rows}
    many = len(names) > 4  # then one legend under both panels, a name a row
    height = 4 + LEGEND_ROW_INCHES * (len(names) + 1) if many else 4
    fig = Figure(figsize=(10, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS))
    palette = colormaps["tab20"].colors + colormaps["tab20b"].colors
    colours = {name: palette[i % len(palette)] for i, name in enumerate(sorted(names))}
    datasets = sorted({name.split(" / ")[0] for name in names})
    styles = {d: ("-", "--", ":", "-.")[i % 4] for i, d in enumerate(datasets)}
    for ax, (key, ylabel) in zip(axes, PANELS, strict=True):
        series = _series(rows, key)
        for name, pts in series.items():
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                label=name,
                color=colours[name],  # one colour a series in both panels, 40 before repeating
                linestyle=styles[name.split(" / ")[0]],  # a line style a data set
            )
        here = (_finite(current.get("epsilon")), _finite(current.get(key))) if current else None
        if here and here[0] and here[0] > 0 and here[1] is not None:
            ax.scatter(
                [here[0]],
                [here[1]],
                marker="*",
                s=260,
                c="crimson",
                zorder=5,
                edgecolors="black",
                label=f"this run ({_series_name(current)})",
            )
            series = series or {"this run": []}
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if series:
            if not many:
                ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if many:  # the panels' handles, each name once, outside the axes so no point is hidden
        named = dict(zip(*reversed(axes[0].get_legend_handles_labels()), strict=True))
        for ax in axes[1:]:
            named |= dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        fig.legend(
            named.values(), named.keys(), loc="outside lower center", ncols=1, fontsize="small"
        )  # one column: long variant names in two columns ran off both sides
    title = "Privacy-utility trade-off"
    if sub := _subtitle(rows + ([dict(current)] if current else [])):
        title += f" ({sub})"
    fig.suptitle(title)
    return fig


def png_bytes_of_figure(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes (for inline embedding in the HTML report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def privacy_utility_png(
    rows: list[Mapping[str, Any]], current: Mapping[str, Any] | None = None
) -> bytes:
    """The privacy-utility figure as PNG bytes."""
    return png_bytes_of_figure(privacy_utility_figure(rows, current))


def privacy_utility_plot(rows: list[Mapping[str, Any]], path: str | PathLike[str]) -> None:
    """Write the privacy-utility figure to ``path`` (format from the suffix, PNG by default)."""
    fig = privacy_utility_figure(rows)
    fig.savefig(path)


def report_variant(report: Mapping[str, Any]) -> str | None:
    """The stage-2 variant of a run report, to tell apart released-mode methods on a plot."""
    config = report.get("config", {})
    mechanism = config.get("stage1", {}).get("mechanism", "dpsgd-autoencoder")
    conditional = bool(config.get("stage1", {}).get("conditional_decoder", False))
    stage1 = None if mechanism == "dpsgd-autoencoder" and not conditional else str(mechanism)
    if conditional:
        stage1 = f"{stage1}, label-conditioned decoder"
    if report.get("mode") != "released":
        # The default (DP-SGD diffusion) stays unnamed, as in the rows recorded before the
        # sufficient-statistics families existed; those get their own line.
        private = config.get("stage2", {}).get("private_model", "diffusion")
        if private == "diffusion":
            return stage1
        return f"{stage1} + {private}" if stage1 else str(private)
    stage2 = str(config.get("stage2", {}).get("released_model", "diffusion"))
    return f"{stage1} + {stage2}" if stage1 else stage2


def report_point(report: Mapping[str, Any]) -> dict[str, Any]:
    """A run report as a plot row (what `privacy_utility_figure` marks as "this run")."""
    privacy, metrics = report["privacy"], report.get("metrics", {})
    return {
        "dataset": report.get("dataset"),
        "mode": report.get("mode"),
        "variant": report_variant(report),
        "epsilon": privacy.get("epsilon"),
        "delta": privacy.get("delta"),
        "adjacency": privacy.get("adjacency"),
        "accuracy": metrics.get("accuracy"),
        "classifier_fd": metrics.get("classifier_fd"),
    }


def run_privacy_utility_png(report: Mapping[str, Any], results: str | PathLike[str]) -> bytes:
    """The benchmark rows of the run's data set (from `results`, if present) with the run
    itself starred: where this run sits on the measured trade-off."""
    rows = load_result_rows(results, report.get("dataset"))
    return privacy_utility_png(rows, current=report_point(report))
