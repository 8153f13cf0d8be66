"""A run's two reports: the release report (exactly what the guarantee covers: the guarantee,
config, timings, artefact list; no value read from real data) and the custodian report (the same
plus the evaluation metrics and any opted-in unnoised values). Both are validated before they
are written, and written atomically (release files world-readable, custodian files 0600).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tdpdm.data import storage
from tdpdm.report.html import render_report_html
from tdpdm.report.schema import report_to_json, validate_report

REPORT_JSON, REPORT_HTML = "report.json", "report.html"
EMPTY_METRICS = {"accuracy": None, "inception_score": None, "classifier_fd": None, "fid": None}
RELEASE_METRICS_NOTE = (
    "No metric read from real data is published: evaluation (opt-in, evaluation.enabled) "
    "writes its figures to the custodian part only (custodian/report.json)."
)
CUSTODIAN_METRICS_NOTE = (
    "Custodian-only (read the real data without noise; never publish). Accuracy: the DPDM CNN "
    "trained on the synthetic images (epoch chosen on a synthetic validation split) and tested "
    "on the real test split. Inception Score and classifier-FD: from a CNN trained on the real "
    "training split (FD against the real test split). FID needs the pytorch-fid Inception "
    "weights file."
)
CUSTODIAN_PART = "custodian: never publish (values read from the private data without noise)"


def release_report(
    *,
    version: str,
    run_id: str,
    dataset: str,
    mode: str,
    n_records: int,
    seed: int,
    wall_time_s: float,
    hardware: Mapping[str, Any],
    privacy: Mapping[str, Any],
    config: Mapping[str, Any],
    stages: list[dict[str, Any]],
    latents: Mapping[str, Any],
    artifacts: Mapping[str, Any],
    tuning: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "tdpdm_version": version,
        "run_id": run_id,
        "dataset": dataset,
        "mode": mode,
        "n_records": n_records,
        "seed": seed,
        "wall_time_s": wall_time_s,
        "hardware": dict(hardware),
        "privacy": dict(privacy),
        "metrics": dict(EMPTY_METRICS),
        "metrics_note": RELEASE_METRICS_NOTE,
        "config": dict(config),
        "stages": [dict(s) for s in stages],
        "latents": dict(latents),
        "artifacts": dict(artifacts),
    }
    if tuning is not None:
        report["tuning"] = dict(tuning)
    return report


def custodian_report(
    release: Mapping[str, Any],
    *,
    metrics: Mapping[str, Any],
    stages: list[dict[str, Any]],
    wall_time_s: float,
    unnoised: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The release report plus what only the custodian may see."""
    report = dict(release) | {
        "metrics": dict(metrics),
        "metrics_note": CUSTODIAN_METRICS_NOTE,
        "stages": [dict(s) for s in stages],
        "wall_time_s": wall_time_s,
        "part": CUSTODIAN_PART,
    }
    if unnoised is not None:
        report["training_losses"] = dict(unnoised)
    return report


def write_report(
    where: Callable[..., str],
    report: Mapping[str, Any],
    grid_png: bytes,
    *,
    figures: Mapping[str, bytes] | None = None,
    private: bool,
) -> None:
    """Validate first, then write report.json and report.html under `where(name)`."""
    validate_report(report)
    storage.write_bytes_atomic(where(REPORT_JSON), report_to_json(report).encode(), private=private)
    html = render_report_html(report, grid_png=grid_png, extra_images=figures)
    storage.write_bytes_atomic(where(REPORT_HTML), html.encode(), private=private)
