"""The audit's human-readable outputs: one figure and a small self-contained `audit.html`."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tdpdm.audit.metrics import roc_curve


def audit_figure_png(
    scores: np.ndarray, included: np.ndarray, claimed: float, lower_bound: float
) -> bytes:
    """Score histograms (members vs non-members), ROC on log axes, claimed vs audited epsilon."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    hist, roc, eps = fig.subplots(1, 3, width_ratios=[1.3, 1, 0.7])
    bins = np.histogram_bin_edges(scores, bins=40)
    hist.hist(scores[included], bins=bins, alpha=0.6, label="inserted (member)")
    hist.hist(scores[~included], bins=bins, alpha=0.6, label="not inserted")
    hist.set_xlabel("membership score (higher: more likely trained on)")
    hist.set_ylabel("canaries")
    hist.legend()
    hist.set_title("scores of the canaries")

    fpr, tpr = roc_curve(scores, included)
    floor = 1.0 / max(int((~included).sum()), 1) / 2
    roc.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), drawstyle="steps-post", label="attack")
    grid = np.logspace(np.log10(floor), 0, 50)
    roc.plot(grid, grid, ls="--", c="grey", label="chance")
    roc.set_xscale("log")
    roc.set_yscale("log")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    roc.legend(loc="lower right")
    roc.set_title("ROC (log-log)")

    eps.bar(
        ["claimed\n(upper bound)", "audited\n(lower bound)"],
        [claimed, lower_bound],
        color=["tab:blue", "tab:red" if lower_bound > claimed else "tab:green"],
    )
    eps.set_ylabel("epsilon")
    eps.set_title("privacy: claimed vs audited")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _row(key: str, value: Any) -> str:
    return f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"


def render_audit_html(audit: Mapping[str, Any], figure_png: bytes) -> str:
    c, b, a = audit["claimed"], audit["bound"], audit["attack"]
    rows = [
        _row("verdict", audit["verdict"]),
        _row("claimed epsilon (accountant upper bound)", f"{c['epsilon']:.3f}"),
        _row(
            f"audited epsilon lower bound ({100 * b['confidence']:g} % confidence)",
            f"{b['epsilon_lower_bound']:.3f}",
        ),
        _row("delta, adjacency", f"{c['delta']:g}, {c['adjacency']}"),
        _row("canaries (inserted)", f"{audit['canaries']['m']} ({audit['canaries']['inserted']})"),
        _row("canary design", audit["canaries"]["design"]),
        _row("attack (scorer)", f"{audit['scorer']['name']}: {audit['scorer']['description']}"),
        *(
            _row(f"attack detail: {k}", v)
            for k, v in audit["scorer"].get("details", {}).items()
            if isinstance(v, (str, int, float))
        ),
        _row("attack AUC", f"{a['auc']:.3f}"),
        *(_row(f"TPR at FPR {k}", f"{v:.3f}") for k, v in a["tpr_at_fpr"].items()),
        _row(
            "best guesses (k+, k-): correct / made",
            f"({b['best']['k_plus']}, {b['best']['k_minus']}): "
            f"{b['best']['correct']} / {b['best']['guesses']}",
        ),
        _row("records trained on", audit["n_records"]),
    ]
    grid = "".join(
        f"<tr><td>{g['k_plus']}</td><td>{g['k_minus']}</td><td>{g['correct']} / {g['guesses']}"
        f"</td><td>{g['epsilon_lower_bound']:.3f}</td></tr>"
        for g in b["grid"]
    )
    figure = base64.b64encode(figure_png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tdpdm privacy audit {html.escape(audit["run_id"])}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}
table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style>
</head><body>
<h1>Privacy audit of run {html.escape(audit["run_id"])} ({html.escape(audit["dataset"])},
{html.escape(audit["mode"])} mode)</h1>
<p>{html.escape(audit["method"])}</p>
<table>{"".join(rows)}</table>
<p><img alt="canary scores, ROC and claimed vs audited epsilon" src="data:image/png;base64,{figure}"
 style="max-width:100%"></p>
<h2>Guess sizes fixed in advance (each tested at level beta / {len(b["grid"])})</h2>
<table><tr><th>k+</th><th>k-</th><th>correct / guesses</th><th>epsilon lower bound</th></tr>
{grid}</table>
<p>{html.escape(audit["note"])}</p>
</body></html>
"""
