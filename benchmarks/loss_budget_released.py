"""Issue 14's loss budget for a `released`-mode run (both stage-1 mechanisms), called by
benchmarks/loss_budget.py when the run's report says `mode: released`.

CUSTODIAN-ONLY MEASUREMENT. Rows a-d (and `real`) read the real training split WITHOUT
differential privacy: they encode the real records, re-noise them with noise the script draws
itself from a public seed, and fit stage 2 to them. Nothing here is a DP release, nothing is
charged to a ledger, and no output may be published as covered by a guarantee.

Every row is the DPDM CNN's accuracy on the real test split. The records are the run's record
count (`n_records` of its report; a public random subset of the training split when the run used
a subset, whose own Poisson subset is secret), put exactly as the release puts them (the same
product functions: `release_vectors` + `published_parts` for the autoencoder, clipping and public
scales included; `clean_release` for the Lipschitz VAE), i.e. what the release would publish
with its noise switched off:
  real             trained on the real training split (the records themselves);
  a recon          on the run's decoder's reconstructions of those clean latents;
  b clean          on samples of the run's stage-2 family (`fit_deconvolved_mixture`, the run's
                   components and iterations) fitted to the clean latents and clean labels,
                   told noise std 0 for both parts;
  c noisy-labels   the same, clean latents but the label part re-noised at the run's published
                   `label_noise_std_per_coordinate` (and the fit told that std, latent std 0);
  d noisy-latents  the same, latents re-noised at the run's `noise_std_per_coordinate`, clean
                   labels (the fit told that std, label std 0);
  e release        the run's own DP result: its custodian report's accuracy, else (key
                   `e_release_from_synthetic`) the same CNN on its released synthetic data (a DP
                   output; only the test split is real).
The JSON line's keys: real, a_reconstructions, b_clean, c_noisy_labels, d_noisy_latents,
e_release, and what the rows used (mechanism, records, the two stds, components_per_class,
iterations, synthetic). Rows b-d draw `synthetic` samples (default: the run's
evaluation.synthetic_count, as row e), with balanced labels, and decode them with the run's
decoder, as the pipeline does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tdpdm.config import RunConfig  # noqa: E402
from tdpdm.stages import lipschitz_release  # noqa: E402
from tdpdm.stages.artifacts import RunLayout, load_model_state  # noqa: E402
from tdpdm.stages.deconvolve import LatentMixture, fit_deconvolved_mixture  # noqa: E402
from tdpdm.stages.encode import decode, encode  # noqa: E402
from tdpdm.stages.release import published_parts, release_vectors  # noqa: E402
from tdpdm.stages.sample import generate  # noqa: E402
from tdpdm.stages.stage1_mechanisms import STAGE1_MECHANISMS  # noqa: E402

ROWS = {
    "real": "real",
    "a": "a_reconstructions",
    "b": "b_clean",
    "c": "c_noisy_labels",
    "d": "d_noisy_latents",
    "e": "e_release",
}
NAMES = {"recon": "a", "clean": "b", "noisy-labels": "c", "noisy-latents": "d", "release": "e"}
"""Row names accepted besides the letters of issue 14."""


def row_letter(row: str) -> str:
    letter = NAMES.get(row, row)
    if letter not in ROWS:
        raise SystemExit(f"unknown released-mode row {row!r}: a-e, real, or {', '.join(NAMES)}")
    return letter


@dataclass(frozen=True)
class ReleasedRun:
    """What the budget needs of a finished `released`-mode run: its config, its stage-1 model
    (encoder and decoder) and the noise stds its release published per coordinate."""

    cfg: RunConfig
    model: Any
    noise_std: float
    label_noise_std: float
    n_records: int

    @classmethod
    def open(cls, run: str, report: dict[str, Any]) -> ReleasedRun:
        cfg = RunConfig().replace(**report["config"])
        # as `tdpdm sample --from` (10 classes: the built-in data sets)
        model = STAGE1_MECHANISMS[cfg.stage1.mechanism].blank(cfg, 10)
        load_model_state(RunLayout(run).autoencoder, model)
        latents = report["latents"]
        return cls(
            cfg,
            model.eval(),
            float(latents["noise_std_per_coordinate"]),
            float(latents["label_noise_std_per_coordinate"]),
            int(report["n_records"]),
        )

    @property
    def mechanism(self) -> str:
        return self.cfg.stage1.mechanism

    def clean_parts(
        self, images: np.ndarray, labels: np.ndarray, num_classes: int, device: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(latents, label vectors): what the run's release would publish for these records
        without its noise (its own transform, public scales and clipping included)."""
        if self.mechanism == "lipschitz-vae":
            return lipschitz_release.clean_release(
                self.model, images, labels, num_classes=num_classes
            )
        z = encode(self.model, images, device)
        vectors = release_vectors(z, labels, num_classes=num_classes, cfg=self.cfg.release)
        return published_parts(vectors, z.shape[1], self.cfg.release)


def renoised(x: np.ndarray, std: float, seed: int, stream: int) -> np.ndarray:
    """x + N(0, std^2) per coordinate (std 0: x itself), from a public seed (a custodian
    measurement, not a release)."""
    if std == 0:
        return x
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    return x + rng.normal(0.0, std, size=x.shape)


def budget_inputs(
    letter: str,
    latents: np.ndarray,
    label_vectors: np.ndarray,
    *,
    noise_std: float,
    label_noise_std: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Rows b, c, d: (latents, label vectors, latent std, label std) stage 2 is fitted to and
    told, from the clean parts: which part carries the run's noise, and the std present in each
    (0 where clean)."""
    s = noise_std if letter == "d" else 0.0
    t = label_noise_std if letter == "c" else 0.0
    return renoised(latents, s, seed, 1), renoised(label_vectors, t, seed, 2), s, t


def fit_row(
    latents: np.ndarray,
    label_vectors: np.ndarray,
    noise_std: float,
    label_noise_std: float,
    *,
    components: int,
    iterations: int,
    seed: int,
) -> LatentMixture:
    """The run's stage-2 family fitted through the noise stds actually present."""
    return fit_deconvolved_mixture(
        latents,
        label_vectors,
        noise_std=noise_std,
        label_noise_std=label_noise_std,
        components_per_class=components,
        iterations=iterations,
        seed=seed,
        progress=False,
    )


def released_budget(
    run: str,
    report: dict[str, Any],
    letters: list[str],
    train: tuple[np.ndarray, np.ndarray],
    cnn: Callable[[np.ndarray, np.ndarray], float],
    release_accuracy: Callable[[], tuple[str, float]],
    *,
    synthetic: int | None,
    components: int | None,
    iterations: int | None,
    seed: int,
    device: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Rows `letters` (see the module) for the released-mode run `run`, as a dict of figures
    and what they were computed with."""
    r = ReleasedRun.open(run, report)
    s2 = r.cfg.stage2
    components = components or s2.mixture_components
    iterations = iterations or s2.mixture_iterations
    synthetic = synthetic or r.cfg.evaluation.synthetic_count
    classes = int(train[1].max()) + 1
    images, labels = train
    if r.n_records < len(labels):  # the run's own subset is secret: a public one of its size
        keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[: r.n_records])
        images, labels = images[keep], labels[keep]
    out: dict[str, Any] = {
        "mechanism": r.mechanism,
        "records": len(labels),
        "noise_std_per_coordinate": r.noise_std,
        "label_noise_std_per_coordinate": r.label_noise_std,
        "components_per_class": components,
        "iterations": iterations,
        "synthetic": synthetic,
    }
    if s2.released_model != "deconvolution":
        log(f"note: the run's stage 2 is {s2.released_model}; rows b-d fit the deconvolution")
    clean = None
    for letter in letters:
        t0 = time.perf_counter()
        if letter == "real":
            out[ROWS[letter]] = cnn(images, labels)
        elif letter == "e":
            key, accuracy = release_accuracy()
            out[key] = accuracy
        else:
            if clean is None:
                clean = r.clean_parts(images, labels, classes, device)
            out[ROWS[letter]] = _fitted_row(
                letter,
                r,
                clean,
                labels,
                cnn,
                classes=classes,
                components=components,
                iterations=iterations,
                synthetic=synthetic,
                seed=seed,
                device=device,
            )
        log(f"row {letter}: {time.perf_counter() - t0:.0f} s")
    return out


def _fitted_row(
    letter: str,
    r: ReleasedRun,
    clean: tuple[np.ndarray, np.ndarray],
    labels: np.ndarray,
    cnn: Callable[[np.ndarray, np.ndarray], float],
    *,
    classes: int,
    components: int,
    iterations: int,
    synthetic: int,
    seed: int,
    device: str,
) -> float:
    """Row a (the decoder on the clean latents) or b-d (samples of a fit, decoded)."""
    if letter == "a":
        return cnn(decode(r.model, clean[0], device, labels=labels), labels)
    x, w, s, t = budget_inputs(
        letter, *clean, noise_std=r.noise_std, label_noise_std=r.label_noise_std, seed=seed
    )
    mixture = fit_row(x, w, s, t, components=components, iterations=iterations, seed=seed)
    samples, sample_labels = generate(
        mixture,
        r.model,
        synthetic,
        num_classes=classes,
        steps=0,
        guidance=1.0,
        seed=seed,
        device=device,
        progress=False,
    )
    return cnn(samples, sample_labels)
