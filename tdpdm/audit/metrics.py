"""Attack quality from membership scores: ROC curve, AUC, TPR at low FPR.

These describe how well the scores separate members from non-members; the epsilon lower bound
itself comes from `tdpdm.privacy.audit_bound`, which is what carries a confidence statement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

LOW_FPRS = (0.01, 0.001)


def roc_curve(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], included[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos]


def auc(scores: np.ndarray, included: np.ndarray) -> float:
    """P[score of a member > score of a non-member] (ties count 1/2): Mann-Whitney U / (n1 n0)."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    n1, n0 = int(included.sum()), int((~included).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[included].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Best TPR among thresholds whose FPR is at most `target`."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_summary(scores: np.ndarray, included: np.ndarray) -> dict[str, Any]:
    fpr, tpr = roc_curve(scores, included)
    n_out = int((~np.asarray(included, dtype=bool)).sum())
    return {
        "auc": auc(scores, included),
        "tpr_at_fpr": {f"{f:g}": tpr_at_fpr(fpr, tpr, f) for f in LOW_FPRS},
        "note": (
            f"{n_out} non-member canaries: an FPR below {1 / max(n_out, 1):.2g} means no false "
            "positive at all"
        ),
    }
