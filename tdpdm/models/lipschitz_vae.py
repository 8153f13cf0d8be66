"""A VAE whose encoder mean has a *proven* Lipschitz bound (DESIGN 3.5, arXiv 2304.11336).

The encoder mean mu is an MLP on the flattened image: linear layers whose weights are kept in
the spectral-norm ball {W : ||W||_2 <= 1} by an exact projection (`project_weights`: the largest
singular value from a direct eigen/singular-value solver, not from power iteration, which only
estimates it from below), and MaxMin (GroupSort-2) activations, which are
1-Lipschitz. No normalisation layer with a data-dependent scale appears. Hence
||mu(x) - mu(x')|| <= L ||x - x'|| with L = prod_i ||W_i||_2 <= 1, computed exactly from the
final weights by `lipschitz_bound`.

The posterior q(z|x) = N(mu(x), s^2 I) has a *fixed* standard deviation s (a per-record s would
make the noise data-dependent and void the Gaussian mechanism): s is the release noise, so the
decoder learns to decode exactly the noisy latents the release publishes. Latents are handled on
the scale w = (z - mu(c)) / R, c the grey image 0.5 and R = sqrt(C H W) / 2 (14 for grey 28x28):
since [0, 1]^(C H W) lies in the ball of radius R around c, the clean part of w lies in the unit
ball (a public, data-independent map), which is the range stage 2 expects; `decode` accepts w.

The input shape (`channels`, `image_size`) is public (the config's): the input set's diameter
sqrt(C H W) and R follow from it alone (`input_diameter`), never from the data.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tdpdm.models.autoencoder import one_hot_labels

IMAGE_SIDE = 28
INPUT_DIM = IMAGE_SIDE * IMAGE_SIDE
INPUT_DIAMETER = math.sqrt(INPUT_DIM)
"""L2 diameter of the input set [0, 1]^784 (pixels / 255): sqrt(784) = 28."""
LATENT_RADIUS = INPUT_DIAMETER / 2
"""Radius of [0, 1]^784 around its centre: with L <= 1, ||mu(x) - mu(c)|| <= 14."""


def input_diameter(channels: int = 1, image_size: int = IMAGE_SIDE) -> float:
    """L2 diameter of the input set [0, 1]^(channels x image_size^2): sqrt(C H W), from the
    shape alone (28 for grey 28x28; about 55.4 for RGB 32x32)."""
    if channels < 1 or image_size < 1:
        raise ValueError(f"bad image shape: {channels} channels, side {image_size}")
    return math.sqrt(channels * image_size * image_size)


class MaxMin(nn.Module):
    """GroupSort with groups of 2: each pair (a, b) -> (max, min). Sorting two numbers is
    1-Lipschitz in L2 and keeps their norm, so unlike ReLU it loses no gradient norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=-1)


def _spectral_norm(w: torch.Tensor) -> float:
    """Largest singular value of a float64 matrix, as sqrt of the top eigenvalue of its smaller
    Gram matrix: a direct (not iterative) solver, exact to float64 rounding, and several times
    cheaper than a full SVD of the rectangular weight (it runs after every training step). The
    bound used at release (`lipschitz_bound`) is recomputed with an SVD."""
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))


class LipschitzVAE(nn.Module):
    """Images in [0, 1]^(C x S x S) <-> latents w = (mu(x) + s * noise - mu(c)) / R,
    R = sqrt(C S^2) / 2 (`latent_radius`; 14 for grey 28x28).

    `normalise=False` switches the spectral projection off (only for tests that show the bound
    check catches an unconstrained encoder); a model built that way must never release.
    """

    def __init__(
        self,
        latent_dim: int = 8,
        hidden: int = 256,
        depth: int = 2,
        normalise: bool = True,
        *,
        channels: int = 1,
        image_size: int = IMAGE_SIDE,
        label_classes: int = 0,
    ) -> None:
        super().__init__()
        self.label_classes = label_classes
        """> 0: the decoder also reads the one-hot label (no part of the bounded encoder)."""
        if hidden % 2:
            raise ValueError(f"hidden must be even for MaxMin pairs, got {hidden}")
        self.latent_dim, self.hidden, self.depth = latent_dim, hidden, depth
        self.normalise = normalise
        self.channels, self.image_size = channels, image_size
        self.input_diameter = input_diameter(channels, image_size)
        self.latent_radius = self.input_diameter / 2
        layers: list[nn.Module] = [nn.Flatten()]
        width = channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), MaxMin()]
            width = hidden
        layers.append(nn.Linear(width, latent_dim))
        self.encoder_mean = nn.Sequential(*layers)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + label_classes, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, channels * image_size * image_size),
            nn.Unflatten(1, (channels, image_size, image_size)),
        )
        self.register_buffer("noise_std", torch.tensor(1.0))
        """s: the posterior (= release) noise standard deviation on the mu scale."""
        self.register_buffer("center", torch.zeros(latent_dim))
        """mu(c) / R, set at release (`set_center`); zero while training, where the decoder's
        first bias absorbs the constant offset."""
        for layer in self.lipschitz_layers():
            # Orthogonal rows/columns: spectral norm exactly 1, so with MaxMin the encoder
            # starts out norm-preserving instead of contracting (more signal per unit noise).
            nn.init.orthogonal_(layer.weight)
        self.project_weights()

    def lipschitz_layers(self) -> list[nn.Linear]:
        return [m for m in self.encoder_mean if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def project_weights(self) -> None:
        """W <- W / max(1, ||W||_2) for every encoder layer (exact largest singular value).

        A function of the (DP) weights only, so it is post-processing."""
        if not self.normalise:
            return
        for layer in self.lipschitz_layers():
            w = layer.weight.double()
            norm = _spectral_norm(w)
            while norm > 1.0:
                # Divide with a little margin for the cast back to the weight's dtype, and
                # confirm on the weights as stored (rarely needs a second round).
                layer.weight.copy_(w / (norm * (1.0 + 1e-6)))
                w = layer.weight.double()
                norm = _spectral_norm(w)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """L = prod ||W_i||_2 (exact, float64) of the weights as they are now: a proven upper
        bound on the L2 Lipschitz constant of mu, whatever the training did."""
        bound = 1.0
        for layer in self.lipschitz_layers():
            bound *= float(torch.linalg.matrix_norm(layer.weight.double(), ord=2))
        return bound

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """mu(x) on its own scale (the quantity the Lipschitz bound is about)."""
        return self.encoder_mean(x)

    @torch.no_grad()
    def set_center(self) -> None:
        """Fix the latent origin at mu(c), c the grey image (post-processing of the weights)."""
        shape = (1, self.channels, self.image_size, self.image_size)
        grey = torch.full(shape, 0.5, device=self.center.device)
        self.center.copy_(self.mean(grey)[0] / self.latent_radius)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The noiseless latent (never released as such: see stages/lipschitz_release.py)."""
        return self.mean(x) / self.latent_radius - self.center

    def _decoder(self, w: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.label_classes:
            w = torch.cat([w, one_hot_labels(labels, self.label_classes, w)], dim=1)
        return self.decoder(w)

    def decode_logits(self, w: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._decoder(w + self.center, labels)

    def decode(self, w: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(w, labels))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction logits from one posterior draw w = (mu(x) + s * noise) / R (the
        centre is zero while training).

        In training mode the weights are first projected: the forward pass of step t follows
        the update of step t-1, so this is projected (DP-)SGD without any cooperation from the
        optimiser, and it works unchanged inside Opacus's and Ray Train's wrappers (every rank
        holds the same weights, so every rank projects identically). Callers project once more
        after the last step."""
        return self.reconstruct(x, labels)[0]

    def reconstruct(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction logits, the noiseless latent mu(x) / R): `forward`, plus the latent a
        training-only label head reads (`LabelledLipschitzVAE`)."""
        if self.training:
            self.project_weights()
        z = self.mean(x)
        noisy = (z + self.noise_std * torch.randn_like(z)) / self.latent_radius
        logits = self._decoder(noisy, labels)
        return logits, z / self.latent_radius


class LabelledLipschitzVAE(nn.Module):
    """A Lipschitz VAE with a linear label head on its latent, for stage-1 training only
    (`stage1.label_objective_weight`), as `LabelledAutoencoder` is for the autoencoder. The head
    reads mu(x) but is no part of the encoder, so the proven bound on mu is untouched; it is
    dropped after training (`vae`) and never reaches a release or a checkpoint."""

    def __init__(self, vae: LipschitzVAE, num_classes: int) -> None:
        super().__init__()
        self.vae = vae
        self.label_head = nn.Linear(vae.latent_dim, num_classes)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction logits, label logits); `labels` feed a label-conditioned decoder."""
        logits, z = self.vae.reconstruct(x, labels)
        return logits, self.label_head(z)
