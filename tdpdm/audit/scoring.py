"""Membership scores from a run's *released* artefacts: higher means "more likely trained on".

A scorer sees only what the run publishes (model checkpoints, released latents) plus public
facts (the config, the seed, hence the initial weights); never the training records. Scorers
are looked up by name, so another stage-1 mechanism can register its own attack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from tdpdm.config import RunConfig
from tdpdm.data import storage
from tdpdm.models.autoencoder import ConvAutoencoder
from tdpdm.pipeline import AUTOENCODER, LATENTS
from tdpdm.stages.encode import encode, images_to_tensor, reconstruction_loss
from tdpdm.stages.latents_io import read_latents


@dataclass
class RunArtifacts:
    """A finished run's published outputs under `out`, loaded on first use."""

    cfg: RunConfig
    out: str
    autoencoder_path: str = AUTOENCODER
    latents_path: str = LATENTS

    @cached_property
    def autoencoder(self) -> ConvAutoencoder:
        import io

        if stage1_mechanism(self.cfg) != "dpsgd-autoencoder":
            raise ValueError(
                f"the built-in scorers read a ConvAutoencoder checkpoint, not stage1.mechanism "
                f"{stage1_mechanism(self.cfg)!r}"
            )
        model = ConvAutoencoder(self.cfg.stage1.latent_dim, self.cfg.stage1.width)
        raw = storage.read_bytes(storage.join(self.out, self.autoencoder_path))
        model.load_state_dict(torch.load(io.BytesIO(raw), weights_only=True))
        return model.eval()

    @cached_property
    def initial_autoencoder(self) -> ConvAutoencoder:
        """The weights training started from: public, since the seed and config are."""
        torch.manual_seed(self.cfg.seed)
        s1 = self.cfg.stage1
        return ConvAutoencoder(latent_dim=s1.latent_dim, width=s1.width).eval()

    @cached_property
    def released_latents(self) -> np.ndarray:
        latents, _, meta = read_latents(storage.join(self.out, self.latents_path))
        if meta.get("sensitive", True):
            raise ValueError(
                "the run's latents are a sensitive intermediate (private mode), not a release: "
                "a scorer may not read them"
            )
        return latents


Scorer = Callable[[RunArtifacts, np.ndarray, np.ndarray], np.ndarray]
"""`scorer(artifacts, images uint8 (k, H, W), labels (k,))` -> scores (k,)."""


@torch.no_grad()
def _per_record_loss(model: ConvAutoencoder, images: np.ndarray, batch: int = 512) -> np.ndarray:
    out = [
        reconstruction_loss(model, [images_to_tensor(images[i : i + batch])])
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out).double().numpy()


def reconstruction_gain(art: RunArtifacts, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How much training lowered the autoencoder's reconstruction loss on the record.

    The loss under the initial weights is subtracted so that records that are simply easy (or
    hard) to reconstruct do not look like members (or non-members)."""
    before = _per_record_loss(art.initial_autoencoder, images)
    after = _per_record_loss(art.autoencoder, images)
    return before - after


def nearest_released_latent(
    art: RunArtifacts, images: np.ndarray, labels: np.ndarray, batch: int = 1024
) -> np.ndarray:
    """Minus the distance from the record's encoding (with the released, DP encoder) to the
    nearest released latent row: a member's own noisy row lies near its encoding."""
    released = torch.from_numpy(art.released_latents).double()
    z = torch.from_numpy(encode(art.autoencoder, images, "cpu")).double()
    nearest = [
        torch.cdist(z[i : i + batch], released).min(dim=1).values for i in range(0, len(z), batch)
    ]
    return -torch.cat(nearest).numpy()


@torch.no_grad()
def lipschitz_nearest_released_latent(
    art: RunArtifacts, images: np.ndarray, labels: np.ndarray, batch: int = 1024
) -> np.ndarray:
    """Minus the distance from the record's noiseless Lipschitz-VAE latent (released encoder)
    to the nearest released latent row (the `lipschitz-vae` mechanism's own attack)."""
    import io

    from tdpdm.stages.lipschitz_release import new_lipschitz_vae

    model = new_lipschitz_vae(art.cfg)
    raw = storage.read_bytes(storage.join(art.out, art.autoencoder_path))
    model.load_state_dict(torch.load(io.BytesIO(raw), weights_only=True))
    model.eval()
    released = torch.from_numpy(art.released_latents).double()
    z = torch.cat(
        [
            model.encode(images_to_tensor(images[i : i + batch]))
            for i in range(0, len(images), batch)
        ]
    ).double()
    nearest = [
        torch.cdist(z[i : i + batch], released).min(dim=1).values for i in range(0, len(z), batch)
    ]
    return -torch.cat(nearest).numpy()


SCORERS: dict[str, Scorer] = {
    "reconstruction_gain": reconstruction_gain,
    "nearest_released_latent": nearest_released_latent,
    "lipschitz_nearest_released_latent": lipschitz_nearest_released_latent,
}
DEFAULT_SCORERS: dict[tuple[str, str], str] = {
    ("dpsgd-autoencoder", "private"): "reconstruction_gain",
    ("dpsgd-autoencoder", "released"): "nearest_released_latent",
    ("lipschitz-vae", "released"): "lipschitz_nearest_released_latent",
}
"""(stage-1 mechanism, mode) -> the attack `tdpdm audit` uses unless told otherwise."""


def stage1_mechanism(cfg: RunConfig) -> str:
    return getattr(cfg.stage1, "mechanism", "dpsgd-autoencoder")


def default_scorer(cfg: RunConfig) -> str:
    key = (stage1_mechanism(cfg), cfg.mode)
    if key not in DEFAULT_SCORERS:
        raise ValueError(
            f"no membership attack for stage1.mechanism {key[0]!r} in {key[1]} mode; register "
            "one with tdpdm.audit.scoring.register_scorer and pass --scorer"
        )
    return DEFAULT_SCORERS[key]


def register_scorer(name: str, scorer: Scorer) -> None:
    """Add an attack (e.g. for another stage-1 mechanism); names are unique."""
    if name in SCORERS:
        raise ValueError(f"a scorer named {name!r} is already registered")
    SCORERS[name] = scorer


def get_scorer(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; known: {', '.join(sorted(SCORERS))}") from None
