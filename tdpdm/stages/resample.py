"""More synthetic records from a finished run, later: post-processing of its release only.

Everything read here lies in `<run>/release/` and is covered by the run's guarantee: the
report (its config and privacy section), the decoder trained with DP-SGD
(`models/autoencoder.pt`), the stage-2 model (`models/diffusion.pt`: the diffusion denoiser, or
the class mixture of `deconvolution` / `dp-moments` / `dp-mixture`, fitted by DP mechanisms or
on a DP release) and the footer of the run's synthetic file (the class names). Nothing under
`custodian/` is opened, no private record is read and no ledger is touched: sampling costs no
privacy. The seed is public and governs only the sampler.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from torch import nn

from tdpdm import __version__
from tdpdm.config import ConfigError, RunConfig
from tdpdm.data import storage
from tdpdm.data.catalog import get_spec
from tdpdm.data.errors import DataError
from tdpdm.models.ambient import AmbientDenoiser
from tdpdm.models.diffusion import LatentDenoiser
from tdpdm.privacy.statement import parquet_guarantee
from tdpdm.stages.artifacts import (
    AUTOENCODER,
    DIFFUSION,
    RELEASE,
    REPORT_JSON,
    SYNTHETIC,
    load_state_into,
    read_state_dict,
)
from tdpdm.stages.deconvolve import LatentMixture
from tdpdm.stages.sample import generate
from tdpdm.stages.stage1_mechanisms import STAGE1_MECHANISMS
from tdpdm.stages.synthetic_io import synthetic_class_names, synthetic_table, write_synthetic

SAMPLE_METADATA = b"tdpdm_sample"
"""Schema metadata key of a file drawn later: where from, how many, the public seed."""


def release_folder(run: str) -> str:
    """`run` is a run's `--out` folder or its `release/` folder (a copy of it published alone)."""
    run = run.rstrip("/") or run
    if storage.exists(storage.join(run, RELEASE, REPORT_JSON)):
        return storage.join(run, RELEASE)
    if storage.exists(storage.join(run, REPORT_JSON)):
        return run
    raise FileNotFoundError(
        f"{storage.redact(run)}: no {RELEASE}/{REPORT_JSON}: not a finished tdpdm run"
    )


@dataclass(frozen=True)
class PublishedRun:
    """A finished run's release, loaded to draw more synthetic records (post-processing)."""

    release: str
    report: dict[str, Any]
    cfg: RunConfig
    decoder: nn.Module
    stage2: nn.Module
    class_names: list[str]

    @classmethod
    def open(cls, run: str) -> PublishedRun:
        release = release_folder(run)
        where = storage.redact(release)
        report = _read_report(storage.join(release, REPORT_JSON), f"{where}/{REPORT_JSON}")
        for key in ("run_id", "dataset", "config", "privacy"):
            if key not in report:
                raise ValueError(f"{where}/{REPORT_JSON}: no {key!r}: not a run report")
        try:
            cfg = RunConfig().replace(**report["config"])
        except (ConfigError, TypeError) as err:
            raise ValueError(f"{where}/{REPORT_JSON}: its config is not readable ({err})") from None
        # the decoder's file is checked first; its label inputs (if any) follow the stage 2's
        decoder_state = read_state_dict(storage.join(release, AUTOENCODER))
        stage2 = load_stage2(storage.join(release, DIFFUSION))
        decoder = STAGE1_MECHANISMS[cfg.stage1.mechanism].blank(cfg, int(stage2.num_classes))
        load_state_into(storage.join(release, AUTOENCODER), decoder, decoder_state)
        names = _class_names(release, cfg, stage2.num_classes)
        return cls(release, report, cfg, decoder, stage2, names)

    @property
    def num_classes(self) -> int:
        return int(self.stage2.num_classes)

    @property
    def guarantee(self) -> dict[str, Any]:
        """The `tdpdm` metadata the run wrote into its own synthetic file (same function)."""
        r = self.report
        return parquet_guarantee(r["privacy"], r["run_id"], r["dataset"])

    def sample(
        self, n: int, *, seed: int, device: str = "cpu", progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (n, H, W), labels int64 (n,)), balanced over the classes."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"the number of records to draw must be a positive integer, got {n!r}")
        s2 = self.cfg.stage2
        return generate(
            self.stage2,
            self.decoder,
            int(n),
            num_classes=self.num_classes,
            steps=s2.sampler_steps,
            guidance=s2.guidance,
            sharpen=s2.sharpen,
            seed=seed,
            device=device,
            progress=progress,
        )

    def write(self, uri: str, images: np.ndarray, labels: np.ndarray, *, seed: int) -> None:
        """The run's own layout and `tdpdm` guarantee metadata, plus where the file came from."""
        write_synthetic(uri, images, labels, **self._layout(len(labels), seed))

    def table(self, images: np.ndarray, labels: np.ndarray, *, seed: int) -> pa.Table:
        """What `write` writes, as an Arrow table (its schema metadata included)."""
        return synthetic_table(images, labels, **self._layout(len(labels), seed))

    def _layout(self, count: int, seed: int) -> dict[str, Any]:
        provenance = {
            "run_id": self.report["run_id"],
            "count": count,
            "seed": seed,
            "tdpdm_version": __version__,
            "note": "drawn later from the run's release: post-processing, no privacy cost",
        }
        return {
            "class_names": self.class_names,
            "guarantee": self.guarantee,
            "extra": {SAMPLE_METADATA: provenance},
        }

    def default_output(self, n: int, seed: int) -> str:
        return storage.join(self.release, "more", f"sample-seed{seed}-n{n}.parquet")


def fresh_seed() -> int:
    """A public sampler seed for a draw that names none (recorded in the file it makes)."""
    return secrets.randbits(31)


def load_stage2(uri: str) -> nn.Module:
    """A saved stage-2 model, its shape read from the weights themselves (a Tune search may
    have chosen another width or depth than the config's)."""
    state = read_state_dict(uri)
    try:
        if {"means", "class_shares", "log_weights", "scale_tril"} <= set(state):
            k, d = state["means"].shape
            model: nn.Module = LatentMixture(k, d, state["class_shares"].shape[1])
        else:
            hidden, latent_dim = state["inp.weight"].shape
            depth = len({m.group(1) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))})
            classes = state["label.weight"].shape[0] - 1
            if "noise_var" in state:  # an ambient denoiser (its buffers are loaded below)
                model = AmbientDenoiser(latent_dim, classes, hidden, depth)
            else:
                model = LatentDenoiser(latent_dim, classes, hidden, depth)
        model.load_state_dict(state)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(
            f"{storage.redact(uri)}: not a readable stage-2 model ({type(err).__name__}: {first})"
        ) from None
    return model


def _read_report(uri: str, where: str) -> dict[str, Any]:
    try:
        report = json.loads(storage.read_bytes(uri, max_bytes=64 << 20))
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{where}: not a JSON report ({err})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{where}: the report is not a JSON object")
    return report


def _class_names(release: str, cfg: RunConfig, num_classes: int) -> list[str]:
    """The names the run published with its synthetic file, else its data set's names."""
    try:
        names = synthetic_class_names(storage.join(release, SYNTHETIC))
    except (DataError, FileNotFoundError):
        names = []
    if len(names) != num_classes:
        try:
            names = list(get_spec(cfg.dataset).class_names)
        except (KeyError, ValueError, LookupError):
            names = []
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return [str(name) for name in names]
