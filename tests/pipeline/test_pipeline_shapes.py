"""Issue 15: the models follow the data's shape. An RGB 32x32 class-folder set made here (red
squares, blue discs, green bars) runs end to end and its synthetic Parquet loads in Hugging Face
`datasets` as 32x32 RGB `Image`s with a `ClassLabel` of the folder names; `tdpdm sample --from`
rebuilds the decoder from the release report alone; an `.npz` of RGB arrays runs too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tdpdm_test_support import tiny_run_overrides, torch_threads

from tdpdm.cli import main
from tdpdm.config import load_config
from tdpdm.pipeline import run_pipeline
from tdpdm.privacy.ledger import Ledger

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SIDE = 32
PER_CLASS = 40
CLASSES = ("red-squares", "blue-discs", "green-bars")


def shape_image(kind: int, rng: np.random.Generator) -> np.ndarray:
    """(SIDE, SIDE, 3) uint8: a coloured shape of class `kind` on a dark, noisy background."""
    img = rng.integers(0, 40, size=(SIDE, SIDE, 3)).astype(np.uint8)
    cy, cx = rng.integers(10, SIDE - 10, size=2)
    r = int(rng.integers(5, 9))
    yy, xx = np.mgrid[:SIDE, :SIDE]
    if kind == 0:
        mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    elif kind == 1:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    else:
        mask = abs(xx - cx) <= 2
    img[mask] = [(220, 30, 30), (30, 30, 220), (30, 200, 30)][kind]
    return img


def shape_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    return np.stack([shape_image(int(k), rng) for k in labels]), labels


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, labels = shape_arrays()
    root = tmp_path_factory.mktemp("rgb") / "shapes"
    for i, (img, k) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASSES[int(k)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="RGB").save(folder / f"{i:04d}.png")
    return root


def _overrides(tmp_path: Path, data: Path, **extra) -> dict:
    base = tiny_run_overrides(tmp_path, "unused", "private", subset=None, delta=1e-3)
    del base["dataset"]
    return {
        **base,
        "data": str(data),
        "image_size": SIDE,
        "stage1.batch_size": 64,
        "stage2.private_model": "dp-moments",
        "evaluation.synthetic_count": 60,
        **extra,
    }


def _load_hf(parquet: Path):
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset("parquet", data_files=str(parquet), split="train")


def _check_rgb_parquet(parquet: Path, count: int, names: list[str]) -> None:
    import datasets

    ds = _load_hf(parquet)
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == names
    assert len(ds) == count
    for row in ds.select(range(6)):
        assert row["image"].mode == "RGB" and row["image"].size == (SIDE, SIDE)
    pixels = np.stack([np.asarray(row["image"]) for row in ds.select(range(6))])
    assert (pixels[..., 0] != pixels[..., 2]).any()  # colour, not grey stored as RGB
    assert set(ds["label"]) <= set(range(len(CLASSES)))


def test_rgb_folder_runs_end_to_end_and_loads_in_datasets(tmp_path: Path, rgb_folder: Path):
    cfg = load_config(None, _overrides(tmp_path, rgb_folder))
    assert cfg.channels is None  # read from the folder's description
    with torch_threads(1):
        result = run_pipeline(cfg, log=lambda _: None)
    release = Path(cfg.out) / "release"
    report = json.loads((release / "report.json").read_text())
    # the release report carries the shape `tdpdm sample --from` rebuilds the decoder with
    assert report["config"]["channels"] == 3 and report["config"]["image_size"] == SIDE
    folders = sorted(CLASSES)  # class folders are named in sorted order
    _check_rgb_parquet(release / "synthetic" / "part-0.parquet", 60, folders)
    with Image.open(release / "samples.png") as grid:
        assert grid.mode == "RGB"
    assert result.epsilon <= cfg.epsilon
    [charge] = Ledger(cfg.ledger).charges("shapes")
    assert charge.status == "settled"

    # More records later from the release alone: the decoder is rebuilt 3x32x32.
    more = tmp_path / "more.parquet"
    code = main(["sample", "--from", str(cfg.out), "--n", "30", "--seed", "3", "--out", str(more)])
    assert code == 0
    _check_rgb_parquet(more, 30, folders)


def test_rgb_npz_runs_with_the_lipschitz_vae(tmp_path: Path) -> None:
    """An `.npz` of (N, H, W, 3) arrays, through the Lipschitz mechanism: its sensitivity is
    that of [0, 1]^(3*32*32), from the shape."""
    images, labels = shape_arrays(seed=1)
    npz = tmp_path / "shapes-npz.npz"
    np.savez(npz, images=images, labels=labels)
    extra = {
        "mode": "released",
        "classes": list(CLASSES),
        "stage1.mechanism": "lipschitz-vae",
        "stage1.vae_hidden": 64,
        "stage1.latent_dim": 8,
        "stage2.released_model": "deconvolution",
    }
    cfg = load_config(None, _overrides(tmp_path, npz, **extra))
    with torch_threads(1):
        run_pipeline(cfg, log=lambda _: None)
    release = Path(cfg.out) / "release"
    report = json.loads((release / "report.json").read_text())
    assert report["config"]["channels"] == 3
    diameter = report["latents"]["input_diameter"]
    assert diameter == pytest.approx(np.sqrt(3 * SIDE * SIDE))
    _check_rgb_parquet(release / "synthetic" / "part-0.parquet", 60, list(CLASSES))
