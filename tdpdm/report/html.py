"""The run report as one self-contained HTML page, for the privacy officer who signs it off.

Everything is inline (CSS, images as data URIs) and a Content-Security-Policy forbids any other
load and any script, so the page can be mailed, archived or opened offline and shows exactly
what was written. Jinja2 autoescaping is on: config strings come from users and must never
become markup.
"""

from __future__ import annotations

import base64
import json
import math
import numbers
import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal
from functools import cache
from os import PathLike
from typing import Any

import jinja2

from tdpdm.choices import ADJACENCY_WORDS
from tdpdm.report.schema import METRIC_KEYS, atomic_write_text, validate_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

MODE_WORDS = {
    "private": (
        "private latents: stage 2 trained with DP-SGD on access-controlled latents "
        "(central DP); the latents themselves are never published"
    ),
    "released": (
        "released latents: each record's latent and label released once with Gaussian noise; "
        "everything after that release is post-processing. The release is differentially "
        "private only because the number of records is public (replace-one adjacency)"
    ),
}

EVENT_KIND_WORDS = {
    "poisson_gaussian": "DP-SGD (Poisson-subsampled Gaussian)",
    "gaussian": "Gaussian release",
}

METRIC_LABELS = {
    "accuracy": "Downstream CNN accuracy (trained on synthetic, tested on the real test split)",
    "inception_score": "Inception score (10-class classifier, maximum 10)",
    "classifier_fd": "Frechet distance in the evaluation classifier's features (not FID)",
    "fid": "FID (Inception-v3 features)",
}

_EVENT_COLUMNS = {"kind", "stage", "noise_multiplier", "sampling_rate", "steps"}


def fmt_epsilon(eps: float) -> str:
    """Three decimals, rounded *up*: a displayed epsilon must never understate the guarantee."""
    return str(Decimal(repr(float(eps))).quantize(Decimal("0.001"), rounding=ROUND_CEILING))


def fmt_delta(delta: float) -> str:
    """Scientific notation without padding, e.g. ``1e-5`` or ``2.5e-6``."""
    mantissa, exponent = f"{float(delta):.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def fmt_number(x: Any, spec: str = ".4g") -> str:
    """Numbers by ``spec``, None as ``n/a``, anything else as compact JSON."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if isinstance(x, numbers.Real):
        return format(float(x), spec) if math.isfinite(x) else str(x)
    return x if isinstance(x, str) else json.dumps(x, sort_keys=True, default=str)


def fmt_metric(key: str, value: Any) -> str:
    if value is None or not isinstance(value, numbers.Real) or isinstance(value, bool):
        return fmt_number(value)
    if key.startswith("accuracy"):
        return f"{value * 100:.2f}%" if 0 <= value <= 1 else f"{value:.4g}"
    if key in ("inception_score", "classifier_fd", "fid"):
        return f"{value:.2f}"
    return fmt_number(float(value))


def fmt_seconds(s: float) -> str:
    """Seconds, plus h/min/s when long enough for raw seconds to be hard to read."""
    s = float(s)
    text = f"{s:,.1f} s"
    if s >= 60:
        m, sec = divmod(round(s), 60)
        h, m = divmod(m, 60)
        text += f" ({h} h {m} min)" if h else f" ({m} min {sec} s)"
    return text


def png_data_uri(png: bytes) -> str:
    """Inline a PNG; refuses anything else, so a wrong buffer fails here, not in a browser."""
    if not png.startswith(PNG_MAGIC):
        raise ValueError("image bytes are not a PNG")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def _event_row(event: Mapping[str, Any]) -> dict[str, str]:
    kind = event["kind"]
    steps = event.get("steps", 1 if kind == "gaussian" else None)
    extra = {k: v for k, v in event.items() if k not in _EVENT_COLUMNS}
    return {
        "stage": str(event["stage"]),
        "kind": EVENT_KIND_WORDS.get(kind, kind),
        "kind_code": kind,
        "noise_multiplier": fmt_number(float(event["noise_multiplier"])),
        "sampling_rate": fmt_number(
            float(event["sampling_rate"]) if "sampling_rate" in event else None
        ),
        "steps": fmt_number(steps),
        "extra": ", ".join(f"{k}={fmt_number(v)}" for k, v in sorted(extra.items())),
    }


def _view(report: Mapping[str, Any]) -> dict[str, Any]:
    """Pre-format every value, so the template only lays out strings."""
    p = report["privacy"]
    b = p["budget"]
    spent, total = float(b["spent_epsilon_after_run"]), float(b["epsilon"])
    metrics = report["metrics"]
    keys = list(METRIC_KEYS) + sorted(k for k in metrics if k not in METRIC_KEYS)
    hardware = report["hardware"]
    return {
        "run_id": report["run_id"],
        "version": report["tdpdm_version"],
        "dataset": report["dataset"],
        "mode": report["mode"],
        "mode_words": MODE_WORDS.get(report["mode"], report["mode"]),
        "n_records": fmt_number(int(report["n_records"])),
        "seed": str(report["seed"]),
        "epsilon": fmt_epsilon(p["epsilon"]),
        "epsilon_exact": repr(float(p["epsilon"])),
        "delta": fmt_delta(p["delta"]),
        "delta_exact": repr(float(p["delta"])),
        "adjacency": p["adjacency"],
        "adjacency_words": ADJACENCY_WORDS[p["adjacency"]],
        "accountant": p["accountant"],
        "statement": p["statement"],
        "not_covered": list(p["not_covered"]),
        "events": [_event_row(e) for e in p["events"]],
        "budget": {
            "epsilon": fmt_epsilon(total),
            "delta": fmt_delta(b["delta"]),
            "adjacency": b["adjacency"],
            "adjacency_words": ADJACENCY_WORDS[b["adjacency"]],
            "spent": fmt_epsilon(spent),
            "percent": f"{min(max(spent / total * 100, 0.0), 100.0):.1f}",
        },
        "metrics": [
            {"key": k, "label": METRIC_LABELS.get(k, k), "value": fmt_metric(k, metrics.get(k))}
            for k in keys
        ],
        "metrics_note": report["metrics_note"],
        "evaluated": any(metrics.get(k) is not None for k in keys),
        "wall_time": fmt_seconds(report["wall_time_s"]),
        "stages": [
            {
                "name": str(s["name"]),
                "wall_time": fmt_seconds(s["wall_time_s"]),
                "details": json.dumps(s.get("details", {}), sort_keys=True, default=str),
            }
            for s in report["stages"]
        ],
        "hardware": [(str(k), fmt_number(v)) for k, v in sorted(hardware.items())],
        "config_json": json.dumps(report["config"], sort_keys=True, indent=2, default=str),
        "artifacts": [(str(k), str(v)) for k, v in sorted(report["artifacts"].items())],
        "tuning": _tuning_view(report.get("tuning")),
    }


TRIAL_STATUS_WORDS = {
    "completed": "completed",
    "stopped_by_asha": "stopped early by ASHA",
    "refused": "refused: budget (read no data)",
    "failed": "failed (charged at its full plan)",
}


def _tuning_view(tuning: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The stage-2 search: one row per trial, the chosen one marked."""
    if not tuning:
        return None
    rows = []
    for t in tuning["trials"]:
        rows.append(
            {
                "trial_id": str(t["trial_id"]),
                "status": TRIAL_STATUS_WORDS.get(t["status"], t["status"]),
                "status_code": t["status"],
                "selected": bool(t.get("selected")),
                "hyperparameters": ", ".join(
                    f"{k}={fmt_number(v)}" for k, v in sorted(t["hyperparameters"].items())
                ),
                "steps": fmt_number(t.get("steps")),
                "score": fmt_number(t.get("score")),
                "events": "; ".join(
                    f"{r['stage']}: {r['kind']}, sigma {r['noise_multiplier']}, "
                    f"{r['steps']} step(s)"
                    for r in (_event_row(e) for e in t["events"])
                )
                or "none",
            }
        )
    return {
        "selected": str(tuning["selected_trial"]),
        "score": str(tuning["score"]),
        "requested": fmt_number(tuning.get("trials_requested")),
        "budgeted": fmt_number(tuning.get("budgeted_trials")),
        "rows": rows,
    }


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("tdpdm.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_report_html(
    report: Mapping[str, Any],
    *,
    grid_png: bytes,
    extra_images: Mapping[str, bytes] | None = None,
) -> str:
    """The report page as a string; ``extra_images`` maps captions to PNG bytes (e.g. plots).

    The report is validated first: a page must never present a guarantee the JSON would refuse.
    """
    validate_report(report)
    figures = [
        {"caption": caption, "id": f"figure-{_slug(caption)}", "src": png_data_uri(png)}
        for caption, png in (extra_images or {}).items()
    ]
    template = _environment().get_template("report.html")
    return template.render(r=_view(report), grid_src=png_data_uri(grid_png), figures=figures)


def write_report_html(
    report: Mapping[str, Any],
    path: str | PathLike[str],
    grid_png: bytes,
    *,
    extra_images: Mapping[str, bytes] | None = None,
) -> None:
    """Render and write the page atomically (temporary file, then os.replace)."""
    atomic_write_text(
        path, render_report_html(report, grid_png=grid_png, extra_images=extra_images)
    )
