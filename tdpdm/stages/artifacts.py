"""Where a run's outputs go: a release part that is exactly what the guarantee covers, and a
custodian part for everything else (DESIGN 3.8).

    <out>/release/     publishable: synthetic Parquet, sample grid, DP model weights, the
                       released latents (`released` mode), report.json/html with the guarantee
    <out>/custodian/   never publish: evaluation metrics read from real data, private latents
                       (`private` mode), the stage-1 manifest for `tdpdm diffuse`, Tune trial
                       checkpoints, and work/ (checkpoints holding secret generator state,
                       deleted when the run succeeds)

A user who copies `release/` publishes only covered artefacts. One module owns the names so that
the pipeline, the CLI, the audit and the tests agree on them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import torch

from tdpdm.data import storage
from tdpdm.privacy.events import event_from_dict

RELEASE = "release"
CUSTODIAN = "custodian"

SYNTHETIC = "synthetic/part-0.parquet"
SAMPLES_PNG = "samples.png"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
AUTOENCODER = "models/autoencoder.pt"
DIFFUSION = "models/diffusion.pt"
LATENTS = "latents/latents.parquet"
STAGE1_MANIFEST = "stage1.json"
EVALUATION_JSON = "evaluation.json"
WORK = "work"


@dataclass(frozen=True)
class RunLayout:
    """The paths (local or object-store URIs) of one run's outputs under `out`."""

    out: str

    def release(self, *parts: str) -> str:
        return storage.join(self.out, RELEASE, *parts)

    def custodian(self, *parts: str) -> str:
        return storage.join(self.out, CUSTODIAN, *parts)

    @property
    def synthetic(self) -> str:
        return self.release(SYNTHETIC)

    @property
    def autoencoder(self) -> str:
        return self.release(AUTOENCODER)

    @property
    def diffusion(self) -> str:
        return self.release(DIFFUSION)

    def latents(self, mode: str) -> str:
        """A DP release (`released` mode) is publishable; private latents are not."""
        return self.release(LATENTS) if mode == "released" else self.custodian(LATENTS)

    @property
    def manifest(self) -> str:
        return self.custodian(STAGE1_MANIFEST)

    @property
    def work(self) -> str:
        """Custodian-private scratch: DP-SGD checkpoints with secret generator state."""
        return self.custodian(WORK)


def release_listing(mode: str) -> dict[str, str]:
    """The release part's files (relative to `release/`), as the report lists them."""
    listing = {
        "synthetic": SYNTHETIC,
        "samples_png": SAMPLES_PNG,
        "report_json": REPORT_JSON,
        "report_html": REPORT_HTML,
        "autoencoder": AUTOENCODER,
        "stage2_model": DIFFUSION,
    }
    if mode == "released":
        listing["released_latents"] = LATENTS
    return listing


def custodian_listing(mode: str) -> dict[str, str]:
    """The custodian part's files (relative to `custodian/`)."""
    listing = {
        "report_json": REPORT_JSON + " (the release report plus custodian-only values)",
        "report_html": REPORT_HTML,
        "evaluation": EVALUATION_JSON + " (metrics read from the real data)",
        "work": WORK + "/ (checkpoints with secret generator state; deleted on success)",
        "stage1_manifest": STAGE1_MANIFEST,
    }
    if mode == "private":
        listing["private_latents"] = LATENTS
    return listing


def save_model(model: torch.nn.Module, uri: str) -> None:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    storage.write_bytes_atomic(uri, buf.getvalue())


def load_model_state(uri: str, model: torch.nn.Module) -> None:
    """Load a checkpoint into `model`; a damaged or foreign file fails in one short line."""
    load_state_into(uri, model, read_state_dict(uri))


def load_state_into(uri: str, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`state` (read from `uri`) into `model`; weights of another shape fail in one line."""
    try:
        model.load_state_dict(state)
    except Exception as err:
        raise _unreadable(uri, err) from None


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A saved `state_dict`, read as data only (a checkpoint is untrusted input and must not
    run pickled code); a damaged file fails in one short line."""
    raw = storage.read_bytes(uri)
    try:
        # map_location: weights saved from a GPU run load on a machine without one.
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:
        raise _unreadable(uri, err) from None
    if not isinstance(state, dict):
        raise ValueError(f"{storage.redact(uri)}: not a readable checkpoint (not a state dict)")
    return state


def _unreadable(uri: str, err: Exception) -> ValueError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    return ValueError(f"{storage.redact(uri)}: not a readable checkpoint for this model ({first})")


def write_manifest(uri: str, manifest: dict[str, Any]) -> None:
    """An encode run's `stage1.json` (custodian part): what `tdpdm diffuse` continues from."""
    storage.write_bytes_atomic(uri, json.dumps(manifest, indent=2).encode(), private=True)


_MANIFEST_FIELDS = {
    "dataset": str,
    "mode": str,
    "n_records": int,
    "latent_dim": int,
    "width": int,
    "events": list,
}


def read_manifest(uri: str) -> dict[str, Any]:
    """`stage1.json` of an encode run, checked: a damaged one fails in one line naming it."""
    source = storage.redact(uri)
    raw = storage.read_bytes(uri)
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{source}: not a JSON manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{source}: the manifest is not a JSON object")
    for key, kind in _MANIFEST_FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise ValueError(f"{source}: missing or invalid {key!r} ({value!r:.60})")
    try:
        for event in manifest["events"]:
            event_from_dict(event)
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{source}: invalid privacy event ({err})") from None
    return manifest
