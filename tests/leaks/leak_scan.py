"""A scanner for what published artifacts must never contain: training pixels, record
identifiers, credentials. Each check returns findings (empty = clean), so tests can prove it
finds planted leaks (positive controls) before trusting it on real outputs.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

RUN = 16
"""Pixel values in a row that count as a leaked run (a 4x4 patch's worth)."""
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE]-?\d+)?")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DATA_URI = re.compile(rb"data:image/png;base64,([A-Za-z0-9+/=]+)")


@dataclass(frozen=True)
class TrainingSet:
    """The records a run trained on: their raw rows, and every run of RUN pixel values."""

    images: np.ndarray  # uint8 (N, 28, 28)
    row_bytes: frozenset[bytes]
    all_bytes: bytes

    @classmethod
    def of(cls, images: np.ndarray) -> TrainingSet:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        rows = frozenset(img.tobytes() for img in images)
        return cls(images, rows, b"\xff\xfe".join(sorted(rows)))


def raw_pixel_rows(blob: bytes, train: TrainingSet) -> list[str]:
    """Exact 784-byte training rows anywhere in the bytes (uncompressed pixels)."""
    size = train.images[0].size
    found = []
    # Any occurrence of a full row contains its first 32 bytes: search those, confirm the row.
    for row in train.row_bytes:
        at = blob.find(row[:32])
        while at >= 0:
            if blob[at : at + size] == row:
                found.append(f"training row bytes at offset {at}")
                break
            at = blob.find(row[:32], at + 1)
    return found


def _informative(window: list[int]) -> bool:
    """Runs of background (0s) and other near-constant runs match any image: ignore them."""
    return len(set(window)) >= 4 and sum(v > 0 for v in window) >= RUN // 2


def pixel_runs_in_text(text: str, train: TrainingSet) -> list[str]:
    """Runs of RUN consecutive numbers in text/JSON equal to consecutive pixels of a training
    image, as 0-255 integers or as 0-1 floats (x / 255)."""
    numbers = [float(m) for m in _NUMBER.findall(text)]
    found = []
    for i in range(len(numbers) - RUN + 1):
        window = numbers[i : i + RUN]
        for scale in (1.0, 255.0):
            values = [v * scale for v in window]
            if not all(0 <= v <= 255 and abs(v - round(v)) < 1e-3 for v in values):
                continue
            ints = [round(v) for v in values]
            if _informative(ints) and bytes(ints) in train.all_bytes:
                found.append(f"pixel run at number #{i}: {ints[:6]}...")
    return found


def embedded_pngs(blob: bytes) -> list[np.ndarray]:
    """Every PNG inside the bytes: raw (Parquet cells, files) or base64 data URIs (HTML)."""
    chunks = [blob[m.start() :] for m in re.finditer(re.escape(_PNG_MAGIC), blob)]
    chunks += [base64.b64decode(m.group(1)) for m in _DATA_URI.finditer(blob)]
    images = []
    for chunk in chunks:
        try:
            with Image.open(io.BytesIO(chunk)) as im:
                images.append(np.asarray(im.convert("L")))
        except Exception:
            continue
    return images


def training_images_in_pngs(images: Iterable[np.ndarray], train: TrainingSet) -> list[str]:
    """Decoded images (or 28x28 tiles of a grid) identical to a training image."""
    found = []
    h, w = train.images.shape[1:]
    # A tile can only be a training image if its top row is one: a cheap prefilter.
    first_rows = {img[0].tobytes() for img in train.images}
    for k, img in enumerate(images):
        img = np.ascontiguousarray(img)
        for y in range(0, img.shape[0] - h + 1):
            line = img[y].tobytes()
            for x in range(0, img.shape[1] - w + 1):
                if line[x : x + w] in first_rows and (
                    img[y : y + h, x : x + w].tobytes() in train.row_bytes
                ):
                    found.append(f"image #{k} holds a training image at ({y}, {x})")
    return found


def credentials(blob: bytes, secrets: Iterable[str]) -> list[str]:
    """Each secret, raw, URL-encoded or base64-encoded."""
    found = []
    for secret in secrets:
        forms = {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}
        for form in forms:
            if form.encode() in blob:
                found.append(f"credential {secret[:4]}... ({form[:8]}...)")
    return found


RECORD_ID_COLUMNS = re.compile(r"(^|_)(id|idx|index|row|record|position|offset)s?($|_)", re.I)


def record_id_columns(parquet_bytes: bytes) -> list[str]:
    """Parquet columns whose name says they identify a record (pandas' index included)."""
    schema = pq.read_schema(io.BytesIO(parquet_bytes))
    found = [f"column {name!r}" for name in schema.names if RECORD_ID_COLUMNS.search(name)]
    if b"pandas" in (schema.metadata or {}):
        found.append("pandas metadata (may carry an index)")
    return found


def index_runs_in_text(text: str, indices: np.ndarray, run: int = 8) -> list[str]:
    """`run` consecutive integers in the text that are all training-record positions, in
    increasing order (how a list of record ids would be written)."""
    wanted = {int(i) for i in indices}
    numbers = [int(m) for m in re.findall(r"(?<![\d.])\d+(?![\d.])", text)]
    found = []
    for i in range(len(numbers) - run + 1):
        window = numbers[i : i + run]
        if all(v in wanted for v in window) and window == sorted(set(window)):
            found.append(f"record positions at number #{i}: {window}")
    return found


_LOSS_IN_TEXT = re.compile(r"loss\W{0,3}[-+]?\.?\d", re.I)  # "loss 0.41", "loss=.3", "loss: 2"
_LOSS_IN_JSON = re.compile(r'"[a-z_]*loss(es)?"\s*:\s*[-+.\d{\[]', re.I)  # "final_loss": 0.4
_LOSS_SAMPLE = re.compile(r"^tdpdm_training_loss[{ ]", re.M)  # an exported loss series


def loss_values(text: str) -> list[str]:
    """Training losses written as values (unnoised statistics of private records): in log
    lines, JSON fields, or Prometheus samples. A metric's HELP/TYPE lines and a config switch
    (`"custodian_losses": false`) are not values."""
    found = [f"text {m.group(0)!r}" for m in _LOSS_IN_TEXT.finditer(text)]
    found += [f"JSON {m.group(0)!r}" for m in _LOSS_IN_JSON.finditer(text)]
    found += [f"sample {m.group(0)!r}" for m in _LOSS_SAMPLE.finditer(text)]
    return found
