"""Stage 2 for `released` latents: a Gaussian mixture fitted *through* the known release noise.

Every released row is (x, w) = (z + n, onehot(y) + m) with n, m Gaussian of public stds (the
release's noise per coordinate). Fitting a model to x directly learns mostly the noise (DESIGN
8: 5.9 %), and the per-record label arg-max(w) is mostly wrong. This fits the *clean* joint
distribution instead, as extreme deconvolution does (Bovy, Hogg & Roweis 2011): a mixture whose
component k belongs to class c(k), has clean latents z ~ N(mu_k, V_k) and a clean label part
exactly onehot(c(k)); it is observed as N(mu_k, V_k + s^2 I) times N(onehot(c(k)), t^2 I), and
maximum likelihood on that recovers mu_k, V_k and the weights. The noisy label parts decide
class membership softly, through their likelihood, together with the latents. Everything here
reads only the DP release: post-processing, no privacy cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tdpdm.config import Stage2Config
from tdpdm.data import storage
from tdpdm.stages.latents_io import read_label_vectors, read_latents


class LatentMixture(nn.Module):
    """A class-conditional Gaussian mixture over clean latents (a stage-2 model, like the
    diffusion denoiser, saved by `state_dict`)."""

    def __init__(self, components: int, latent_dim: int, num_classes: int) -> None:
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.register_buffer("log_weights", torch.zeros(components))
        self.register_buffer("means", torch.zeros(components, latent_dim))
        self.register_buffer("scale_tril", torch.eye(latent_dim).repeat(components, 1, 1))
        self.register_buffer("class_shares", torch.full((components, num_classes), 1.0))

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None):
        """Latents (n, d) for class labels (n,), clamped to the encoder's range [-1, 1]."""
        probs = self.log_weights.exp().unsqueeze(1) * self.class_shares  # (K, C)
        probs = probs / probs.sum(dim=0, keepdim=True).clamp_min(1e-30)
        dev = self.means.device
        comp = torch.multinomial(probs.T[labels.to(dev)], 1, generator=generator).squeeze(1)
        eps = torch.randn(len(labels), self.latent_dim, 1, generator=generator, device=dev)
        z = self.means[comp] + (self.scale_tril[comp] @ eps).squeeze(-1)
        return z.clamp(-1.0, 1.0)


def fit_deconvolved_mixture(
    latents: np.ndarray,
    label_vectors: np.ndarray,
    *,
    noise_std: float,
    label_noise_std: float,
    components_per_class: int = 2,
    iterations: int = 300,
    lr: float = 0.03,
    ridge: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> LatentMixture:
    """Maximum-likelihood deconvolution of released [latent, one-hot] rows with known noise.

    Latents are whitened (divided by `noise_std`, so their noise is I); `ridge` is added to each
    clean covariance (in those units) to keep it positive definite. The likelihood is maximised
    by full-batch Adam rather than the classic EM: under noise this heavy EM's steps shrink with
    the signal-to-noise ratio and it needs thousands of rounds.

    Either std may be 0, for parts known to be clean (custodian-only measurements such as
    benchmarks/loss_budget_released.py; a DP release is never clean): clean latents are scaled
    by their overall std instead and no noise is added to the clean covariances; a clean label
    part must be one-hot and then fixes each row's class (its arg-max)."""
    n, d = latents.shape
    classes = label_vectors.shape[1]
    k_total = classes * components_per_class
    component_class = np.repeat(np.arange(classes), components_per_class)
    if noise_std < 0 or label_noise_std < 0:
        raise ValueError(f"noise stds must be >= 0, got {noise_std} and {label_noise_std}")
    unit = noise_std if noise_std > 0 else max(float(latents.std()), 1e-6)
    noise_var = (noise_std / unit) ** 2  # 1 unless the latents are clean
    x = latents.astype(np.float64) / unit
    label_ll = _label_log_likelihood(label_vectors, label_noise_std)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDEC0]))

    # Start from the labels' class posteriors (weak but unbiased), each class split at random.
    resp_class = np.exp(label_ll - label_ll.max(axis=1, keepdims=True))
    resp_class /= resp_class.sum(axis=1, keepdims=True)
    split = rng.dirichlet(np.ones(components_per_class), size=n)
    resp = (resp_class[:, :, None] * split[:, None, :]).reshape(n, k_total)
    weights, means, covs = _initial_components(x, resp, ridge, noise_var)

    means, covs, weights = _maximise_likelihood(
        x,
        label_ll[:, component_class],
        means,
        covs,
        weights,
        iterations=iterations,
        lr=lr,
        ridge=ridge,
        noise_var=noise_var,
        progress=progress,
    )
    model = LatentMixture(k_total, d, classes)
    lat_covs = covs * unit**2
    model.log_weights.copy_(torch.from_numpy(np.log(weights)))
    model.means.copy_(torch.from_numpy(means * unit))
    model.scale_tril.copy_(torch.from_numpy(np.linalg.cholesky(lat_covs + 1e-8 * np.eye(d))))
    model.class_shares.copy_(torch.from_numpy(np.eye(classes)[component_class]))
    return model


def _label_log_likelihood(label_vectors: np.ndarray, label_noise_std: float) -> np.ndarray:
    """log N(w_i; onehot(c), t^2 I) per row i and class c, up to a constant shared by all
    classes: w_ic / t^2; at t = 0, 0 for the row's arg-max class and -inf for the others."""
    w = label_vectors.astype(np.float64)
    if label_noise_std > 0:
        return w / label_noise_std**2
    ll = np.full(w.shape, -np.inf)
    ll[np.arange(len(w)), w.argmax(axis=1)] = 0.0
    return ll


def _initial_components(x, resp, ridge, noise_var=1.0):
    """Weighted moments of the whitened latents, noise (`noise_var` I) subtracted, clipped to
    PSD."""
    dim = x.shape[1]
    counts = resp.sum(axis=0) + 1e-10
    means = (resp.T @ x) / counts[:, None]
    covs = np.empty((resp.shape[1], dim, dim))
    for k in range(resp.shape[1]):
        diff = x - means[k]
        cov = (diff * resp[:, k, None]).T @ diff / counts[k] - noise_var * np.eye(dim)
        vals, vecs = np.linalg.eigh(cov)
        covs[k] = (vecs * np.clip(vals, ridge, None)) @ vecs.T + ridge * np.eye(dim)
    return counts / counts.sum(), means, covs


def _maximise_likelihood(
    x, label_ll, means, covs, weights, *, iterations, lr, ridge, progress, noise_var=1.0
):
    """Maximise sum_i log sum_k pi_k N(x_i; mu_k, V_k + s2 I) l_ik over (pi, mu, V = L L^T),
    with s2 = `noise_var` (1 for whitened noisy latents, 0 for clean ones) and l_ik the (fixed)
    likelihood of row i's noisy label part under component k's class."""
    xt = torch.from_numpy(x).float()  # float32: the observed covariances are >= I, well posed
    lt = torch.from_numpy(label_ll).float()
    dim = x.shape[1]
    chol0 = torch.linalg.cholesky(torch.from_numpy(covs)).float()
    mu = nn.Parameter(torch.from_numpy(means).float())
    log_diag = nn.Parameter(torch.diagonal(chol0, dim1=1, dim2=2).log().clone())
    lower = nn.Parameter(torch.tril(chol0, -1).clone())
    logits = nn.Parameter(torch.from_numpy(np.log(weights)).float())
    optimizer = torch.optim.Adam([mu, log_diag, lower, logits], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(iterations, 1))
    eye = torch.eye(dim, dtype=xt.dtype)

    def clean_cov() -> torch.Tensor:
        chol = torch.tril(lower, -1) + torch.diag_embed(log_diag.exp())
        return chol @ chol.transpose(1, 2) + ridge * eye

    for _ in tqdm(range(iterations), desc="deconvolution fit", disable=not progress, unit="it"):
        optimizer.zero_grad(set_to_none=True)
        # the observed covariance, (K, D, D)
        chol = torch.linalg.cholesky(clean_cov() + noise_var * eye)
        diff = (xt.unsqueeze(0) - mu.unsqueeze(1)).transpose(1, 2)  # (K, D, N)
        maha = torch.linalg.solve_triangular(chol, diff, upper=False).pow(2).sum(1)  # (K, N)
        log_det = 2 * torch.diagonal(chol, dim1=1, dim2=2).log().sum(1, keepdim=True)
        log_p = (-0.5 * (maha + log_det + dim * math.log(2 * math.pi))).T
        log_p = log_p + lt + torch.log_softmax(logits, 0)
        loss = -torch.logsumexp(log_p, dim=1).mean()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return (
            mu.double().numpy(),
            clean_cov().double().numpy(),
            torch.softmax(logits.double(), 0).numpy(),
        )


@dataclass(frozen=True)
class PublishedRelease:
    """What a per-record release publishes: noisy latents and label parts, and their (public)
    noise stds per coordinate."""

    latents: np.ndarray
    label_vectors: np.ndarray
    noise_std: float
    label_noise_std: float


def read_release(uri: str) -> PublishedRelease:
    """The release's Parquet as written by `stages/release.py`; a clear error for the older
    format without label vectors or noise levels."""
    latents, _, meta = read_latents(uri)
    label_vectors = read_label_vectors(uri)
    if label_vectors is None or "label_noise_std_per_coordinate" not in meta:
        raise ValueError(
            f"{storage.redact(uri)}: no released label vectors or noise levels; it was written "
            "by an older release format: encode again, or set stage2.released_model=diffusion"
        )
    return PublishedRelease(
        latents,
        label_vectors,
        float(meta["noise_std_per_coordinate"]),
        float(meta["label_noise_std_per_coordinate"]),
    )


def fit_release_model(uri: str, cfg: Stage2Config, *, seed: int, progress: bool) -> LatentMixture:
    """Stage 2 of `released` mode from the published release itself (the Parquet latents):
    reading only what was released is what makes this stage post-processing."""
    return fit_release_mixture(read_release(uri), cfg, seed=seed, progress=progress)


def fit_release_mixture(
    release: PublishedRelease, cfg: Stage2Config, *, seed: int, progress: bool
) -> LatentMixture:
    """The deconvolved mixture of a release already read, with `cfg`'s components and fit."""
    return fit_deconvolved_mixture(
        release.latents,
        release.label_vectors,
        noise_std=release.noise_std,
        label_noise_std=release.label_noise_std,
        components_per_class=cfg.mixture_components,
        iterations=cfg.mixture_iterations,
        seed=seed,
        progress=progress,
    )


@torch.no_grad()
def class_posteriors(
    model: LatentMixture,
    latents: np.ndarray,
    label_vectors: np.ndarray,
    *,
    noise_std: float,
    label_noise_std: float,
) -> np.ndarray:
    """p(class | released row) under a deconvolved mixture, (N, C): each row's latent through
    every component's *observed* Gaussian (clean covariance + the release noise), times its
    noisy label part's likelihood. Post-processing of the release, like the fit itself."""
    x = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float64))
    d = x.shape[1]
    clean = model.scale_tril.double() @ model.scale_tril.double().transpose(1, 2)
    observed = torch.distributions.MultivariateNormal(
        model.means.double(), covariance_matrix=clean + noise_std**2 * torch.eye(d).double()
    )
    shares = model.class_shares.double()  # (K, C), one-hot rows
    log_comp = observed.log_prob(x.unsqueeze(1)) + model.log_weights.double()  # (N, K)
    log_class = torch.logsumexp(
        log_comp.unsqueeze(2) + shares.clamp_min(1e-300).log().unsqueeze(0), dim=1
    )  # (N, C)
    log_post = log_class + torch.from_numpy(_label_log_likelihood(label_vectors, label_noise_std))
    return torch.softmax(log_post, dim=1).numpy()
