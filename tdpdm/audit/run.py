"""`run_audit`: one real, charged training run with canaries, then an epsilon lower bound.

The audit run is the configured pipeline (`run_pipeline`) on the private records plus the
inserted canaries, so it is a mechanism on private data: it is planned for the actual record
count, reserved on the ledger and settled like any run, with its own fresh mechanism keys. The
auditor keeps the coins, scores every canary from the run's *published* artefacts only (its
`release/` part, plus public facts: config, seed, code), and turns the guesses into a lower
bound with the one-run method (`tdpdm.privacy.audit_bound`). A sound mechanism gives a lower
bound below the claimed (accountant) epsilon; a bound above it refutes the claim.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tdpdm import __version__
from tdpdm.audit.canaries import CanaryDesign, CanaryTrainingSet, make_canaries
from tdpdm.audit.metrics import attack_summary
from tdpdm.audit.report import audit_figure_png, render_audit_html
from tdpdm.audit.scoring import RunArtifacts, Scorer, default_scorer, get_scorer, scorer_name
from tdpdm.config import RunConfig
from tdpdm.data import storage
from tdpdm.data.catalog import get_spec
from tdpdm.data.download import ensure_dataset
from tdpdm.pipeline import run_pipeline, training_set
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.audit_bound import audit_lower_bound
from tdpdm.privacy.ledger import Ledger
from tdpdm.stages.context import with_data_shape
from tdpdm.stages.plan import default_adjacency

Log = Callable[[str], None]

METHOD = (
    "One-run audit (Steinke, Nasr & Jagielski 2023, arXiv 2305.08846): m canaries, each inserted "
    "independently with probability 1/2; the auditor guesses 'in' for the highest and 'out' for "
    "the lowest membership scores; for an (epsilon, delta)-DP mechanism the number of correct "
    "guesses is dominated by a binomial (their Theorem 5.2, with its delta term). The lower bound "
    "is the largest epsilon that the observed guesses reject at the stated confidence, over a "
    "grid of guess sizes fixed in advance with a union bound."
)


@dataclass
class AuditResult:
    out: str
    audit: dict[str, Any]

    @property
    def lower_bound(self) -> float:
        return float(self.audit["bound"]["epsilon_lower_bound"])

    @property
    def claimed(self) -> float:
        return float(self.audit["claimed"]["epsilon"])


def run_audit(
    cfg: RunConfig,
    *,
    canaries: int,
    confidence: float = 0.95,
    scorer: str | Scorer | None = None,
    log: Log = print,
) -> AuditResult:
    """Train once on the configured records plus `canaries` canaries; write audit.json/html.

    `scorer`: a registered name, a scorer itself (e.g. `ReplayScorer(derivation)`), or None for
    the mode's default attack."""
    if canaries < 2:
        raise ValueError(f"--canaries must be at least 2, got {canaries}")
    if not (0 < confidence < 1):
        raise ValueError(f"--confidence must be in (0, 1), got {confidence}")
    if scorer is None or isinstance(scorer, str):
        score_fn = get_scorer(scorer or default_scorer(cfg))  # unknown names: refused here
    else:
        score_fn = scorer
    name = scorer_name(score_fn)
    check = getattr(score_fn, "check", None)
    if check is not None:
        check(cfg)  # a scorer that cannot attack this configuration: refused before any charge
    run_cfg = cfg.replace(
        out=storage.join(cfg.out, "run"),
        evaluation=cfg.evaluation.replace(enabled=False),  # the artefacts, not utility metrics
        job_id=cfg.job_id or f"audit-{cfg.dataset}-{cfg.mode}-{uuid.uuid4().hex[:8]}",
    )

    if cfg.data is None:
        spec = get_spec(cfg.dataset)
        data_dir = ensure_dataset(
            cfg.dataset, cfg.data_dir, download_if_missing=cfg.download, progress=cfg.progress
        )
        base = training_set(cfg, data_dir)
    else:  # your own data: its structure checked here, before any charge
        base = training_set(cfg, cfg.data)
        spec = base.describe()
    budget = Ledger(cfg.ledger).budget(cfg.dataset)
    adjacency = budget.adjacency if budget is not None else default_adjacency(cfg.mode)
    design = make_canaries(
        canaries,
        adjacency,
        seed=cfg.seed,
        shape=spec.image_shape if spec.channels == 1 else (spec.channels, *spec.image_shape),
        num_classes=spec.num_classes,
    )
    run_cfg = with_data_shape(run_cfg, spec)  # the scorers rebuild the models of this shape
    # the configured training set (a subset draws its own secret key), canaries appended
    records = CanaryTrainingSet(base, design)
    log(
        f"audit: {canaries} canaries ({int(design.included.sum())} inserted, "
        f"{'paired swap' if design.paired else 'add/remove'} design), scorer {name}"
    )
    result = run_pipeline(run_cfg, log=log, records=records)

    log("audit: scoring the canaries from the run's published artefacts (release/) ...")
    raw = np.asarray(
        score_fn(
            RunArtifacts(run_cfg, run_cfg.out, spec.num_classes), design.candidates, design.labels
        ),
        dtype=np.float64,
    )
    scores = canary_scores(design, raw)
    privacy = result.report["privacy"]
    bound = audit_lower_bound(
        scores, design.included, delta=float(privacy["delta"]), confidence=confidence
    )
    audit = _audit_document(cfg, run_cfg, result.report, design, name, score_fn, bound)
    audit["attack"] = attack_summary(scores, design.included)
    audit["scores"] = {"score": scores.tolist(), "included": design.included.tolist()}
    figure = audit_figure_png(
        scores, design.included, float(privacy["epsilon"]), bound.epsilon_lower_bound
    )
    storage.write_bytes_atomic(
        storage.join(cfg.out, "audit.json"), json.dumps(audit, indent=2).encode()
    )
    storage.write_bytes_atomic(storage.join(cfg.out, "audit.png"), figure)
    storage.write_bytes_atomic(
        storage.join(cfg.out, "audit.html"), render_audit_html(audit, figure).encode()
    )
    return AuditResult(cfg.out, audit)


def canary_scores(design: CanaryDesign, raw: np.ndarray) -> np.ndarray:
    """Per-slot scores: the candidate's own score, or A_i's minus its twin B_i's (paired)."""
    m = design.m
    expected = 2 * m if design.paired else m
    if raw.shape != (expected,):
        raise ValueError(f"the scorer returned {raw.shape} scores for {expected} candidates")
    if not np.all(np.isfinite(raw)):
        raise ValueError("the scorer returned NaN or inf scores")
    return raw[:m] - raw[m:] if design.paired else raw


def _audit_document(
    cfg: RunConfig,
    run_cfg: RunConfig,
    report: dict[str, Any],
    design: CanaryDesign,
    name: str,
    score_fn: Callable[..., Any],
    bound: Any,
) -> dict[str, Any]:
    privacy = report["privacy"]
    details = getattr(score_fn, "details", None)
    claimed = float(privacy["epsilon"])
    lower = bound.epsilon_lower_bound
    adjacency = Adjacency(privacy["adjacency"])
    if lower > claimed:
        verdict = (
            f"REFUTED: the audit certifies epsilon >= {lower:.3f} at "
            f"{100 * bound.confidence:g} % confidence, above the claimed {claimed:.3f}"
        )
    else:
        verdict = (
            f"consistent: audited lower bound {lower:.3f} <= claimed upper bound {claimed:.3f}"
        )
    design_text = (
        "slot i holds canary A_i or its twin B_i (replace-one neighbours; record count fixed)"
        if design.paired
        else "canary i added or left out (add/remove neighbours); as in every run, the "
        "sampling rate comes from the actual record count, which is treated as public"
    )
    return {
        "tdpdm_version": __version__,
        "run_id": run_cfg.job_id,
        "dataset": cfg.dataset,
        "mode": cfg.mode,
        "n_records": int(report["n_records"]),
        "method": METHOD,
        "verdict": verdict,
        "claimed": {
            "epsilon": claimed,
            "delta": float(privacy["delta"]),
            "adjacency": adjacency.value,
            "accountant": privacy["accountant"],
            "events": privacy["events"],
            "charge_id": privacy["charge_id"],
        },
        "bound": bound.as_dict(),
        "canaries": {
            "m": design.m,
            "inserted": int(design.included.sum()),
            "kind": "random binary images with random labels",
            "design": design_text,
            "seed": cfg.seed,
        },
        "scorer": {
            "name": name,
            "description": " ".join((score_fn.__doc__ or "").split("\n\n")[0].split()),
            "reads": "the audit run's release/ part and public facts (config, seed, code)",
        }
        | ({"details": details} if details else {}),
        "run_out": "run",
        "note": (
            "The audit run is a real run on the private records plus canaries, charged on the "
            "ledger; its artefacts contain canaries and are for the audit only. A lower bound "
            "below the claim does not prove the claim (a stronger attack might do better); a "
            "lower bound above it, at the stated confidence, refutes it."
        ),
    }
