"""Published outputs, reports, logs and metrics carry no training pixels, no record
identifiers and no credentials. The scanner first proves, on planted leaks, that it would see
them (positive controls), then scans a real small run per mode (see conftest.py): both the
release part and the custodian part (which must not leak either, only hold what was read from
real data), the ledger, logs and metrics scrapes. The release part also holds no metric and no
training loss, and nothing is written outside the two parts.
"""

from __future__ import annotations

import base64
import io
import json
import stat
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from leak_scan import (
    TrainingSet,
    credentials,
    embedded_pngs,
    index_runs_in_text,
    loss_values,
    pixel_runs_in_text,
    raw_pixel_rows,
    record_id_columns,
    training_images_in_pngs,
)
from leak_support import FAKE_CREDENTIALS, SUBSET_KEY, CapturedRun
from PIL import Image

from tdpdm.stages.synthetic_io import png_bytes
from tdpdm.telemetry import METRICS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SECRETS = list(FAKE_CREDENTIALS.values())
TEXT_SUFFIXES = (".json", ".html", ".txt", ".yaml")


@pytest.fixture(scope="session")
def train(training_subset) -> TrainingSet:
    return TrainingSet.of(training_subset[0])


def _texts(run: CapturedRun) -> dict[str, str]:
    texts = {
        name: blob.decode("utf-8", "replace")
        for name, blob in run.artifacts().items()
        if name.endswith(TEXT_SUFFIXES)
    }
    texts["stdout"], texts["stderr"] = run.stdout, run.stderr
    texts["metrics scrapes"] = "\n".join(run.scrapes)
    return texts


# -- positive controls: the scanner sees what it is meant to see ---------------------------


def test_scanner_finds_planted_leaks(train: TrainingSet, training_subset) -> None:
    # The subset is a secret per-record draw, so pick the control image by a rule, not by
    # index: the densest one (a thin "1" has no run of 16 pixels with 8 inked, which is all
    # `pixel_runs_in_text` looks for; raw rows and PNGs are found whatever the digit).
    image = train.images[int(np.argmax((train.images > 0).sum(axis=(1, 2))))]
    clean = _clean_parquet()
    assert raw_pixel_rows(clean, train) == []
    assert raw_pixel_rows(clean[:100] + image.tobytes() + clean[100:], train)

    pixels = json.dumps({"row": image.reshape(-1).tolist()})
    assert pixel_runs_in_text(pixels, train)
    scaled = json.dumps((image.reshape(-1) / 255.0).round(6).tolist())
    assert pixel_runs_in_text(scaled, train)
    assert pixel_runs_in_text(json.dumps(list(range(0, 784))), train) == []

    leaked_png = _parquet({"image": [png_bytes(image)], "label": [1]})
    assert training_images_in_pngs(embedded_pngs(leaked_png), train)
    grid = np.zeros((60, 90), np.uint8)
    grid[5:33, 40:68] = image
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    html = b'<img src="data:image/png;base64,' + base64.b64encode(buf.getvalue()) + b'">'
    assert training_images_in_pngs(embedded_pngs(html), train)
    assert training_images_in_pngs(embedded_pngs(clean), train) == []

    secret = SECRETS[1]
    assert credentials(f"log: key={secret}".encode(), SECRETS)
    assert credentials(f"url?sig={quote(secret, safe='')}".encode(), SECRETS)
    assert credentials(b"nothing here", SECRETS) == []

    assert record_id_columns(_parquet({"record_id": [1], "label": [2]}))
    assert record_id_columns(_parquet({"latent": [1.0], "label": [2]})) == []
    positions = training_subset[2]
    assert index_runs_in_text(json.dumps({"ids": positions[:20].tolist()}), positions)
    assert index_runs_in_text(json.dumps(list(range(20))), positions[positions > 100]) == []

    assert loss_values("encoder:  40%|####  | 12/30 [00:03, loss=0.4125]")
    assert loss_values(json.dumps({"stages": [{"details": {"final_loss": 0.41}}]}))
    assert loss_values(json.dumps({"training_losses": {"encoder": 0.41}}))
    assert loss_values('tdpdm_training_loss{stage="encoder"} 0.41\n')
    clean = (  # the exporter's own HELP line for the loss is not a value
        f"# HELP tdpdm_training_loss {METRICS['tdpdm_training_loss']}\n"
        "# TYPE tdpdm_training_loss gauge\n" + json.dumps({"custodian_losses": False})
    )
    assert loss_values(clean) == []


def _parquet(columns: dict[str, list]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def _clean_parquet() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    return _parquet({"image": [png_bytes(x) for x in noise], "label": [0, 1, 2, 3]})


# -- the real runs -------------------------------------------------------------------------


def test_the_run_produced_what_is_scanned(captured_run: CapturedRun) -> None:
    """Guards against a vacuous scan: every kind of output exists and has content, in both
    parts, and nothing was written outside them."""
    names = set(captured_run.artifacts())
    release = {"synthetic/part-0.parquet", "report.json", "report.html", "samples.png"}
    release |= {"models/autoencoder.pt", "models/diffusion.pt"}
    assert {f"out/release/{name}" for name in release} <= names
    assert {"out/custodian/report.json", "out/custodian/report.html"} <= names
    latents = captured_run.latents().relative_to(captured_run.root).as_posix()
    assert latents in names
    assert all(n.startswith(("out/release/", "out/custodian/")) for n in names - {"ledger.json"})
    assert not (captured_run.custodian / "work").exists()  # secret generator state: deleted
    assert "guarantee: epsilon" in captured_run.stdout and captured_run.stderr
    assert captured_run.scrapes and "tdpdm" in captured_run.scrapes[-1]


def test_release_part_holds_no_metric_and_no_loss(captured_run: CapturedRun) -> None:
    """The release report states no value read from real data; no unnoised training loss is
    written, logged or exported (custodian_losses is off by default)."""
    report = json.loads((captured_run.release / "report.json").read_text())
    assert set(report["metrics"].values()) == {None}
    assert report["config"]["custodian_losses"] is False
    findings = []
    for name, text in _texts(captured_run).items():
        findings += [f"{name}: {f}" for f in loss_values(text)]
    assert findings == []


def test_custodian_part_is_private(captured_run: CapturedRun) -> None:
    """Custodian files are readable by their owner only."""
    root = captured_run.custodian
    modes = {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file()
    }
    assert "report.json" in modes
    assert modes == dict.fromkeys(modes, 0o600)


def test_no_mechanism_key(captured_run: CapturedRun) -> None:
    """The one key the test knows (the subset's) appears nowhere, in any common spelling."""
    raw = SUBSET_KEY.to_bytes(16, "big")
    forms = {str(SUBSET_KEY), f"{SUBSET_KEY:x}", f"{SUBSET_KEY:X}", base64.b64encode(raw).decode()}
    patterns = [raw, raw[::-1], *(form.encode() for form in forms)]
    blobs = dict(captured_run.artifacts())
    blobs |= {name: text.encode() for name, text in _texts(captured_run).items()}
    found = [(name, p[:8]) for name, blob in blobs.items() for p in patterns if p in blob]
    assert found == []


def test_no_training_pixels(captured_run: CapturedRun, train: TrainingSet) -> None:
    findings = []
    for name, blob in captured_run.artifacts().items():
        findings += [f"{name}: {f}" for f in raw_pixel_rows(blob, train)]
        if not name.endswith(".pt"):
            pngs = embedded_pngs(blob)
            findings += [f"{name}: {f}" for f in training_images_in_pngs(pngs, train)]
    for name, text in _texts(captured_run).items():
        findings += [f"{name}: {f}" for f in pixel_runs_in_text(text, train)]
    assert findings == []


def test_no_record_identifiers(captured_run: CapturedRun, training_subset) -> None:
    _, labels, positions = training_subset
    artifacts = captured_run.artifacts()
    findings = []
    for name, blob in artifacts.items():
        if name.endswith(".parquet"):
            findings += [f"{name}: {f}" for f in record_id_columns(blob)]
    for name, text in _texts(captured_run).items():
        findings += [f"{name}: {f}" for f in index_runs_in_text(text, positions)]
    assert findings == []
    # Row order must not map back to file positions: the latents are shuffled.
    latents = pq.read_table(captured_run.latents())
    assert latents.num_rows == len(labels)
    row_labels = latents.column("label").to_numpy()
    assert not np.array_equal(row_labels, labels)
    if captured_run.mode == "private":
        # Clean labels: the same multiset as the subset the scans assume was trained on.
        assert np.array_equal(np.sort(row_labels), np.sort(labels))
    synthetic = pq.read_table(io.BytesIO(artifacts["out/release/synthetic/part-0.parquet"]))
    paths = synthetic.column("image").combine_chunks().field("path").to_pylist()
    assert all(p.startswith("synthetic-") for p in paths)  # sample numbers, not record ids


def test_no_credentials(captured_run: CapturedRun) -> None:
    findings = []
    for name, blob in captured_run.artifacts().items():
        findings += [f"{name}: {f}" for f in credentials(blob, SECRETS)]
    for name, text in _texts(captured_run).items():
        findings += [f"{name}: {f}" for f in credentials(text.encode(), SECRETS)]
    assert findings == []
