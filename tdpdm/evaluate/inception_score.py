"""Inception Score from a classifier's class probabilities (Salimans et al., 2016)."""

from __future__ import annotations

import numpy as np


def inception_score(probs: np.ndarray, splits: int = 10, *, seed: int = 0) -> tuple[float, float]:
    """Mean and std over `splits` of exp(E_x[KL(p(y|x) || p(y))]); at most the class count.

    Rows are shuffled (with `seed`) before splitting: class-conditional samples often arrive
    sorted by class, and contiguous splits of one class each would score about 1.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected probabilities of shape (N, C) with C >= 2, got {p.shape}")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must lie in [1, N={p.shape[0]}], got {splits}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of probabilities must sum to 1")
    p = p[np.random.default_rng(seed).permutation(p.shape[0])]
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0; where p(y|x) > 0 the marginal is > 0 too.
        safe = np.where(part > 0, part, 1.0)
        kl = np.where(part > 0, part * (np.log(safe) - np.log(np.maximum(marginal, 1e-300))), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
