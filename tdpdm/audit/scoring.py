"""Membership scores from a run's *released* artefacts: higher means "more likely trained on".

A scorer sees only the run's release part (`<run>/release/`: model checkpoints, released
latents) plus public facts (the config, the seed, hence the initial weights, and the project's
own code); never the training records and never the custodian part. `RunArtifacts` only opens
files under `release/`. Scorers are looked up by name, so another stage-1 mechanism can register
its own attack.

`replay` is the white-box adversary of issue 11: it assumes the mechanism keys are a function of
the published seed, regenerates the release noise and the secret row order with the project's
own code, subtracts the noise and looks for each canary's clean encoding among the de-noised
rows. Against fresh OS entropy (the product) it is at chance; against seed-derived keys it
refutes any claimed epsilon.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from tdpdm.config import RunConfig
from tdpdm.data import storage
from tdpdm.models.autoencoder import LatentAutoencoder
from tdpdm.privacy.randomness import KEY_BITS, MechanismKey
from tdpdm.stages.artifacts import AUTOENCODER, LATENTS, RELEASE, load_model_state
from tdpdm.stages.encode import (
    build_autoencoder,
    encode,
    images_to_tensor,
    model_shape,
    new_autoencoder,
    reconstruction_loss,
)
from tdpdm.stages.latents_io import read_label_vectors, read_latents


@dataclass
class RunArtifacts:
    """A finished run's *published* outputs (`<out>/release/`), loaded on first use.

    `out` is the run's output root; every path below is relative to its release part, so a
    scorer cannot reach the custodian part (private latents, metrics, checkpoints) through it."""

    cfg: RunConfig
    out: str
    num_classes: int = 10
    """The data's classes: shapes a label-conditioned decoder (`stage1.conditional_decoder`)."""
    autoencoder_path: str = AUTOENCODER
    latents_path: str = LATENTS

    def release(self, *parts: str) -> str:
        """The URI of a file in the run's release part."""
        return storage.join(self.out, RELEASE, *parts)

    @cached_property
    def autoencoder(self) -> LatentAutoencoder:
        if stage1_mechanism(self.cfg) != "dpsgd-autoencoder":
            raise ValueError(
                f"the built-in scorers read an autoencoder checkpoint, not stage1.mechanism "
                f"{stage1_mechanism(self.cfg)!r}"
            )
        channels, image_size = model_shape(self.cfg)
        model = build_autoencoder(
            self.cfg.stage1, channels=channels, image_size=image_size, num_classes=self.num_classes
        )
        load_model_state(self.release(self.autoencoder_path), model)
        return model.eval()

    @cached_property
    def lipschitz_vae(self) -> torch.nn.Module:
        from tdpdm.stages.lipschitz_release import new_lipschitz_vae

        model = new_lipschitz_vae(self.cfg, self.num_classes)
        load_model_state(self.release(self.autoencoder_path), model)
        return model.eval()

    @cached_property
    def initial_autoencoder(self) -> LatentAutoencoder:
        """The weights training started from: public, since the seed and config are (built by
        the same function the pipeline uses)."""
        channels, image_size = model_shape(self.cfg)
        model = new_autoencoder(
            self.cfg.stage1,
            self.cfg.seed,
            channels=channels,
            image_size=image_size,
            num_classes=self.num_classes,
        )
        return model.eval()

    @cached_property
    def _released(self) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        uri = self.release(self.latents_path)
        if not storage.exists(uri):
            raise ValueError(
                f"the run published no latents ({self.cfg.mode} mode): this scorer needs a "
                "released-latents run (private latents are custodian-only)"
            )
        latents, _, meta = read_latents(uri)
        if meta.get("sensitive", True) or meta.get("kind") != "dp_release":
            raise ValueError(
                "the run's latents are a sensitive intermediate, not a DP release: a scorer may "
                "not read them"
            )
        return latents, read_label_vectors(uri), meta

    @property
    def released_latents(self) -> np.ndarray:
        """(N, d) released noisy latents, in the file's (secretly shuffled) row order."""
        return self._released[0]

    @property
    def released_label_vectors(self) -> np.ndarray | None:
        """(N, classes) released noisy one-hot labels, same row order."""
        return self._released[1]

    @property
    def released_metadata(self) -> dict[str, Any]:
        """The release's public description (noise scales, guarantee)."""
        return self._released[2]


Scorer = Callable[[RunArtifacts, np.ndarray, np.ndarray], np.ndarray]
"""`scorer(artifacts, images uint8 (k, H, W), labels (k,))` -> scores (k,).

A scorer may also have `check(cfg)` (raise ValueError, before the audit run is charged, when it
cannot attack that configuration) and `details` (a JSON-able dict the audit reports)."""


@torch.no_grad()
def _per_record_loss(
    model: LatentAutoencoder, images: np.ndarray, labels: np.ndarray, batch: int = 512
) -> np.ndarray:
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    out = [
        reconstruction_loss(model, [images_to_tensor(images[i : i + batch]), y[i : i + batch]])
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out).double().numpy()


def reconstruction_gain(art: RunArtifacts, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How much training lowered the autoencoder's reconstruction loss on the record.

    The loss under the initial weights (public: seed and config) is subtracted so that records
    that are simply easy (or hard) to reconstruct do not look like members (or non-members)."""
    before = _per_record_loss(art.initial_autoencoder, images, labels)
    after = _per_record_loss(art.autoencoder, images, labels)
    return before - after


def _nearest(z: torch.Tensor, rows: torch.Tensor, batch: int = 1024) -> np.ndarray:
    """Minus the distance from each row of z to its nearest row of `rows`."""
    nearest = [
        torch.cdist(z[i : i + batch], rows).min(dim=1).values for i in range(0, len(z), batch)
    ]
    return -torch.cat(nearest).numpy()


def nearest_released_latent(
    art: RunArtifacts, images: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Minus the distance from the record's encoding (with the released, DP encoder) to the
    nearest released latent row: a member's own noisy row lies near its encoding."""
    released = torch.from_numpy(art.released_latents).double()
    z = torch.from_numpy(encode(art.autoencoder, images, "cpu")).double()
    return _nearest(z, released)


@torch.no_grad()
def _lipschitz_encoding(art: RunArtifacts, images: np.ndarray, batch: int = 1024) -> np.ndarray:
    model = art.lipschitz_vae
    return (
        torch.cat(
            [
                model.encode(images_to_tensor(images[i : i + batch]))
                for i in range(0, len(images), batch)
            ]
        )
        .double()
        .numpy()
    )


def lipschitz_nearest_released_latent(
    art: RunArtifacts, images: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Minus the distance from the record's noiseless Lipschitz-VAE latent (released encoder)
    to the nearest released latent row (the `lipschitz-vae` mechanism's own attack)."""
    released = torch.from_numpy(art.released_latents).double()
    z = torch.from_numpy(_lipschitz_encoding(art, images))
    return _nearest(z, released)


# --- the replay adversary (issue 11) ---------------------------------------------------------

Derivation = Callable[[int, str], int]
"""`(published seed, mechanism purpose) -> guessed 128-bit mechanism key`."""

_LEGACY_TAGS = {"release": 0x7E1EA5E, "lipschitz-release": 0x11F5C17}
"""The stream tags the code before issue 11 mixed into the seed for the release noise."""


def _seed_words(seed: int) -> list[int]:
    """The little-endian 32-bit words NumPy's SeedSequence makes of a non-negative int."""
    if seed < 0:
        raise ValueError(f"a seed is a non-negative integer, got {seed}")
    words = []
    while True:
        words.append(seed & 0xFFFFFFFF)
        seed >>= 32
        if not seed:
            return words


def pre_issue_11_key(seed: int, purpose: str) -> int:
    """The key that makes `MechanismKey(purpose, key).numpy()` the generator the code before
    issue 11 drew from: `SeedSequence([seed, tag])` for the release noise (an int key spreads
    into the same entropy words), `default_rng(seed)` for the row order and anything else."""
    words = _seed_words(seed)
    if purpose in _LEGACY_TAGS:
        words = [*words, _LEGACY_TAGS[purpose]]
    return sum(w << (32 * i) for i, w in enumerate(words))


def seed_as_key(seed: int, purpose: str) -> int:
    """The plainest guess: the published seed *is* every mechanism's key."""
    return seed


DEFAULT_DERIVATIONS: tuple[Derivation, ...] = (pre_issue_11_key, seed_as_key)
"""What an attacker reading the project's code (and its history) tries first."""

MATCH_TOLERANCE = 1e-3
"""A de-noised one-hot label within this of an exact one-hot: the replay reproduced the noise."""


@dataclass(frozen=True)
class ReleaseReplay:
    """The released rows with the replayed noise subtracted (file row order)."""

    latents: np.ndarray
    """(N, d) de-noised latents: exactly the members' clean encodings if the keys were right."""
    label_vectors: np.ndarray
    """(N, classes) de-noised one-hot labels."""
    matched: float
    """Share of rows whose de-noised label is an exact one-hot (up to float32 storage): near 1
    if and only if the guessed keys are the mechanism's."""
    derivation: str


def _release_geometry(art: RunArtifacts) -> tuple[str, Callable[..., np.ndarray]]:
    """(purpose of the release key, the project's own noise function) for the run's mechanism."""
    if stage1_mechanism(art.cfg) == "lipschitz-vae":
        from tdpdm.stages.lipschitz_release import release_noise

        return "lipschitz-release", release_noise
    from tdpdm.stages.release import release_noise

    return "release", release_noise


def replay_release(art: RunArtifacts, derive: Derivation) -> ReleaseReplay:
    """Regenerate the release noise and the row shuffle from keys guessed by `derive` and the
    published seed, exactly as the pipeline draws them (`release_noise(key, (N, d + classes),
    std)`, then `write_latents` permutes the rows with `key.numpy().permutation(N)`), and
    subtract the noise from the published rows. Reads only the release part."""
    latents, label_vectors = art.released_latents, art.released_label_vectors
    if label_vectors is None:
        raise ValueError("the released latents have no label_vector column: nothing to replay")
    meta = art.released_metadata
    n, d = latents.shape
    purpose, noise_fn = _release_geometry(art)
    seed = art.cfg.seed

    def key(what: str) -> MechanismKey:
        return MechanismKey(what, int(derive(seed, what)) % (1 << KEY_BITS))

    # Standard normals in the pipeline's draw order; the published per-coordinate noise scales
    # (std / latent scale, std / label scale) put them on the file's scale.
    unit = noise_fn(key(purpose), (n, d + label_vectors.shape[1]), 1.0)
    order = key("latents-order").numpy().permutation(n)
    unit = unit[order]  # file row j holds record order[j]
    clean_latents = latents - unit[:, :d] * float(meta["noise_std_per_coordinate"])
    clean_labels = label_vectors - unit[:, d:] * float(meta["label_noise_std_per_coordinate"])
    onehot = np.zeros_like(clean_labels)
    onehot[np.arange(n), clean_labels.argmax(axis=1)] = 1.0
    matched = float(np.mean(np.abs(clean_labels - onehot).max(axis=1) < MATCH_TOLERANCE))
    name = getattr(derive, "__name__", type(derive).__name__)
    return ReleaseReplay(clean_latents, clean_labels, matched, name)


class ReplayScorer:
    """Replay: regenerate the release noise from the published seed, subtract it, and take
    minus the distance from the record's clean [encoding, one-hot label] to the nearest
    de-noised row.

    `derive` is the attacker's guess of how keys come from the seed: one function or several
    tried in turn (the replay that reproduces the most exact one-hot labels wins; with none
    matching the first is used, which is then no better than guessing). Released latents only
    (the conv autoencoder's or the Lipschitz VAE's); replaying DP-SGD (private mode) is not
    implemented and refused before the audit run is charged."""

    name = "replay"

    def __init__(self, derive: Derivation | Sequence[Derivation] = DEFAULT_DERIVATIONS) -> None:
        self.derivations: tuple[Derivation, ...] = (derive,) if callable(derive) else tuple(derive)
        if not self.derivations:
            raise ValueError("the replay scorer needs at least one key derivation")
        self.details: dict[str, Any] | None = None

    def check(self, cfg: RunConfig) -> None:
        if cfg.mode != "released":
            raise ValueError(
                f"the replay scorer attacks the per-record latent release; {cfg.mode} mode "
                "trains stage 2 with DP-SGD, whose replay is not implemented (use the scorer "
                "reconstruction_gain)"
            )

    def __call__(self, art: RunArtifacts, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        self.check(art.cfg)
        replays = [replay_release(art, derive) for derive in self.derivations]
        best = max(replays, key=lambda r: r.matched)  # first wins ties
        self.details = {
            "derivation": best.derivation,
            "rows_matched": best.matched,
            "tried": {r.derivation: r.matched for r in replays},
            "note": (
                "rows_matched: share of released rows whose de-noised label is an exact "
                "one-hot, i.e. whose noise the replay reproduced (0 when the keys are secret)"
            ),
        }
        if stage1_mechanism(art.cfg) == "lipschitz-vae":
            z = _lipschitz_encoding(art, images)
        else:
            z = encode(art.autoencoder, images, "cpu").astype(np.float64)
        classes = best.label_vectors.shape[1]
        onehot = np.zeros((len(labels), classes))
        onehot[np.arange(len(labels)), labels] = 1.0
        rows = np.concatenate([best.latents, best.label_vectors], axis=1).astype(np.float64)
        records = np.concatenate([z, onehot], axis=1)
        return _nearest(torch.from_numpy(records), torch.from_numpy(rows))


SCORERS: dict[str, Scorer] = {
    "reconstruction_gain": reconstruction_gain,
    "nearest_released_latent": nearest_released_latent,
    "lipschitz_nearest_released_latent": lipschitz_nearest_released_latent,
    "replay": ReplayScorer(),
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


def scorer_name(scorer: Scorer) -> str:
    """A scorer's name in the registry, else its own `name` or function name."""
    for name, registered in SCORERS.items():
        if registered is scorer:
            return name
    return str(getattr(scorer, "name", getattr(scorer, "__name__", type(scorer).__name__)))
