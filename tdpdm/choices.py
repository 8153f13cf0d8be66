"""The closed sets of names that the config, the report and the command line share.

Each is one `Literal`, defined here once: pydantic validates against it, the report's JSON
Schema lists it, and the CLI's `choices` come from it (`typing.get_args`). This module imports
only `typing`, so the parser and the report layer use it without loading the config machinery.
"""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["private", "released"]
"""`private`: DP-SGD on both stages. `released`: a per-record Gaussian release of the latents."""

Dataset = Literal["mnist", "fashion-mnist"]
"""The built-in data sets the catalog (tdpdm.data.catalog) knows."""

DATASET_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
"""A data set's ledger name: a built-in's, or the one a user's own `data` goes by (issue 15)."""

Stage1Mechanism = Literal["dpsgd-autoencoder", "lipschitz-vae"]
"""Stage 1: the DP-SGD conv autoencoder, or the Lipschitz VAE (a release: `released` only)."""

ReleasedModel = Literal["deconvolution", "diffusion", "ambient-diffusion"]
"""`released` mode's stage 2: a deconvolved Gaussian mixture, diffusion on the noisy latents, or
ambient diffusion through their known noise."""

PrivateModel = Literal["diffusion", "dp-moments", "dp-mixture"]
"""`private` mode's stage 2: DP-SGD latent diffusion, class Gaussians from DP moments, or class
mixtures from a few rounds of DP hard EM on top of them."""

LatentShape = Literal["vector", "spatial"]
"""Stage 1's autoencoder latent: a dense vector, or C feature maps at a quarter of the size."""

MomentsCovariance = Literal["full", "diagonal", "pooled"]
"""dp-moments: full covariances, or diagonal ones (d noisy entries per class, not d(d+1)/2)."""

Adjacency = Literal["add_remove", "replace_one"]
"""The neighbouring relations a guarantee is stated under (tdpdm.privacy.adjacency)."""

MODES: tuple[str, ...] = get_args(Mode)
DATASETS: tuple[str, ...] = get_args(Dataset)
STAGE1_MECHANISMS: tuple[str, ...] = get_args(Stage1Mechanism)
RELEASED_MODELS: tuple[str, ...] = get_args(ReleasedModel)
PRIVATE_MODELS: tuple[str, ...] = get_args(PrivateModel)
ADJACENCIES: tuple[str, ...] = get_args(Adjacency)

ADJACENCY_WORDS: dict[str, str] = {
    "add_remove": "adding or removing one record",
    "replace_one": "replacing one record's value (the number of records is public)",
}
"""What "one record changes" means under each relation: the one wording every report uses."""
