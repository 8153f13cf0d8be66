"""Privacy-utility curves: what each epsilon buys, per mode and data set.

Figures are built on matplotlib's object API with an explicit Agg canvas (never pyplot), so
plotting works headless, in threads and in Ray workers, and never touches global state.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANELS = (
    ("accuracy", "downstream CNN accuracy\n(real test split)"),
    ("classifier_fd", "Frechet distance, classifier features\n(lower is better)"),
)


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> dict[str, list[tuple[float, float]]]:
    """Points (epsilon, value) per "dataset / mode" line; rows lacking either are skipped."""
    out: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        eps, val = _finite(row.get("epsilon")), _finite(row.get(key))
        if eps is None or eps <= 0 or val is None:
            continue
        name = f"{row.get('dataset', '?')} / {row.get('mode', '?')}"
        out.setdefault(name, []).append((eps, val))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _subtitle(rows: list[Mapping[str, Any]]) -> str:
    deltas = {row.get("delta") for row in rows}
    adjs = {row.get("adjacency") for row in rows}
    parts = []
    if len(deltas) == 1 and (d := _finite(next(iter(deltas)))) is not None:
        parts.append(f"delta = {d:.3g}")
    if len(adjs) == 1 and (a := next(iter(adjs))):
        parts.append(f"adjacency: {str(a).replace('_', '/')}")
    return ", ".join(parts)


def privacy_utility_figure(rows: list[Mapping[str, Any]]) -> Figure:
    """Two panels (accuracy, classifier FD) against epsilon on a log axis, a line per mode.

    Each row needs ``epsilon`` and may carry ``accuracy``, ``classifier_fd``, ``dataset``,
    ``mode``, ``delta`` and ``adjacency``; metrics that are None are left out of their panel.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("privacy_utility_figure needs at least one row")
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS))
    for ax, (key, ylabel) in zip(axes, PANELS, strict=True):
        series = _series(rows, key)
        for name, pts in series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    title = "Privacy-utility trade-off"
    if sub := _subtitle(rows):
        title += f" ({sub})"
    fig.suptitle(title)
    return fig


def png_bytes_of_figure(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes (for inline embedding in the HTML report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def privacy_utility_png(rows: list[Mapping[str, Any]]) -> bytes:
    """The privacy-utility figure as PNG bytes."""
    return png_bytes_of_figure(privacy_utility_figure(rows))


def privacy_utility_plot(rows: list[Mapping[str, Any]], path: str | PathLike[str]) -> None:
    """Write the privacy-utility figure to ``path`` (format from the suffix, PNG by default)."""
    fig = privacy_utility_figure(rows)
    fig.savefig(path)
