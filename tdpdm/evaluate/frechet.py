"""Frechet distance between Gaussian fits of two feature sets (the formula behind FID)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from torch import nn

from tdpdm.evaluate.training import batched_outputs

IMAG_TOLERANCE = 1e-3


def _check_features(name: str, feats: np.ndarray) -> np.ndarray:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples for a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name}: features contain NaN or infinite values")
    return f


def _trace_sqrt_product_sqrtm(sigma_a: np.ndarray, sigma_b: np.ndarray, eps: float) -> float:
    """Tr sqrt(Sa Sb) by scipy's sqrtm, with the usual eps * I fallback for singular products.

    The fallback subtracts eps * D from the result: that is the distance between the two
    eps-regularised Gaussians (whose traces grow by eps * D each), so a set compared with
    itself still gives 0 instead of pytorch-fid's -2 eps D.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
            singular = not np.isfinite(covmean).all()
        except scipy.linalg.LinAlgWarning:  # e.g. dead ReLU units: zero-variance features
            singular = True
    if singular:
        warnings.warn(
            f"singular covariance product; adding {eps} to the diagonals",
            RuntimeWarning,
            stacklevel=3,
        )
        offset = np.eye(sigma_a.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if imag > IMAG_TOLERANCE:
            raise ValueError(f"matrix square root has a large imaginary part ({imag:.3g})")
        covmean = covmean.real
    return float(np.trace(covmean)) - (eps * sigma_a.shape[0] if singular else 0.0)


def _trace_sqrt_product_lowrank(centred_a: np.ndarray, centred_b: np.ndarray) -> float:
    """Tr sqrt(Sa Sb) exactly from the centred samples, for when N < D.

    With Sa = A'A/(n-1) and Sb = B'B/(m-1), the non-zero eigenvalues of Sa Sb are the squared
    singular values of A B' / sqrt((n-1)(m-1)); this avoids sqrtm of a rank-deficient D x D
    product, which is slow and numerically unstable.
    """
    n, m = centred_a.shape[0], centred_b.shape[0]
    sv = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False)
    return float(sv.sum() / np.sqrt((n - 1) * (m - 1)))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 sqrt(Sa Sb)) of Gaussians fitted to (N, D) features.

    With at least D samples on both sides it follows pytorch-fid's computation (scipy sqrtm);
    with fewer it uses the exact low-rank identity, so small sets remain well-defined.
    """
    a, b = _check_features("feats_a", feats_a), _check_features("feats_b", feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu_a, b - mu_b
    tr_a = float((ca**2).sum() / (a.shape[0] - 1))
    tr_b = float((cb**2).sum() / (b.shape[0] - 1))
    if tr_a == 0.0 or tr_b == 0.0:
        tr_covmean = 0.0  # a point mass: sqrt(Sa Sb) = 0
    elif min(a.shape[0], b.shape[0]) < a.shape[1]:
        tr_covmean = _trace_sqrt_product_lowrank(ca, cb)
    else:
        # Features constant in both sets (dead ReLU units) add nothing to the covariance terms
        # but make the product singular: dropping them is exact.
        live = (ca != 0).any(axis=0) | (cb != 0).any(axis=0)
        ca, cb = ca[:, live], cb[:, live]
        sigma_a = ca.T @ ca / (a.shape[0] - 1)
        sigma_b = cb.T @ cb / (b.shape[0] - 1)
        tr_covmean = _trace_sqrt_product_sqrtm(sigma_a, sigma_b, eps)
    diff = mu_a - mu_b
    return float(diff @ diff + tr_a + tr_b - 2.0 * tr_covmean)


def classifier_features(
    model: nn.Module, images: np.ndarray, device: str, batch_size: int = 512
) -> np.ndarray:
    """Penultimate (128-d) activations of the evaluation CNN on uint8 (N, 28, 28) images."""
    model.eval()
    return batched_outputs(model.features, images, device, batch_size)
