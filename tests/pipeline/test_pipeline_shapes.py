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


def write_folder(root: Path, seed: int) -> Path:
    images, labels = shape_arrays(seed)
    for i, (img, k) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASSES[int(k)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="RGB").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("rgb") / "shapes", seed=0)


@pytest.fixture(scope="module")
def rgb_test_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A disjoint real test split of the same classes (other draws)."""
    return write_folder(tmp_path_factory.mktemp("rgb-test") / "shapes-test", seed=9)


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


def test_rgb_folder_runs_end_to_end_and_loads_in_datasets(
    tmp_path: Path, rgb_folder: Path, rgb_test_folder: Path
):
    evaluation = {"evaluation.enabled": True, "data_test": str(rgb_test_folder)}
    cfg = load_config(None, _overrides(tmp_path, rgb_folder, **evaluation))
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
    # The custodian's evaluation on the real test split: 3 classes, RGB 32x32 CNNs.
    metrics = result.report["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert 1.0 <= metrics["inception_score"] <= len(CLASSES) + 1e-6
    assert metrics["classifier_fd"] is not None and metrics["classifier_fd"] >= 0
    assert (Path(cfg.out) / "custodian" / "evaluation.json").exists()
    assert report["metrics"]["accuracy"] is None  # never in the release
    assert not (release / "evaluation.json").exists()

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


def test_evaluation_on_own_data_without_a_test_split_is_refused_before_any_charge(
    tmp_path: Path, rgb_folder: Path, capsys
) -> None:
    ledger, out = tmp_path / "ledger.json", tmp_path / "out"
    args = ["run", "--data", str(rgb_folder), "--image-size", "32", "--evaluate"]
    code = main([*args, "--ledger", str(ledger), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--data-test" in err[0], err
    assert not ledger.exists() and not out.exists()


def test_a_test_split_of_other_classes_is_refused_before_any_charge(
    tmp_path: Path, rgb_folder: Path, capsys
) -> None:
    other = tmp_path / "other-test"
    (other / "purple-stars").mkdir(parents=True)
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(other / "purple-stars" / "0.png")
    ledger, out = tmp_path / "ledger.json", tmp_path / "out"
    args = ["run", "--data", str(rgb_folder), "--image-size", "32", "--evaluate", "--no-progress"]
    code = main([*args, "--data-test", str(other), "--ledger", str(ledger), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not ledger.exists() and not out.exists()


def test_data_test_belongs_to_your_own_data() -> None:
    from tdpdm.config import ConfigError

    with pytest.raises(ConfigError, match="data_test is a test split of your own data"):
        load_config(None, {"dataset": "mnist", "data_test": "/tmp/x"})
    ok = load_config(
        None, {"data": "/tmp/own", "data_test": "/tmp/own-test", "evaluation.enabled": True}
    )
    assert ok.data_test == "/tmp/own-test" and ok.dataset == "own"


def test_audit_on_rgb_data(tmp_path: Path, rgb_folder: Path) -> None:
    """The canaries take the data's shape (3x32x32) and the scorers rebuild the RGB models."""
    from tdpdm.audit.run import run_audit

    cfg = load_config(None, _overrides(tmp_path, rgb_folder))
    with torch_threads(1):
        result = run_audit(cfg, canaries=10, log=lambda _: None)
    assert result.lower_bound <= result.claimed
    [charge] = Ledger(cfg.ledger).charges("shapes")
    assert charge.status == "settled"


def test_rgb_encode_then_diffuse(tmp_path: Path, rgb_folder: Path) -> None:
    """`tdpdm encode` then `tdpdm diffuse --from`: the decoder is rebuilt 3x32x32 from the run's
    own (resolved) shape, which the stage-1 manifest records."""
    from tdpdm.pipeline import run_diffuse_stage, run_encode_stage

    enc = load_config(
        None, _overrides(tmp_path, rgb_folder, out=str(tmp_path / "enc"), epsilon=3.0)
    )
    Ledger(enc.ledger).set_budget("shapes", 10.0, enc.delta, "add_remove")
    with torch_threads(1):
        manifest = run_encode_stage(enc, log=lambda _: None)
    assert (manifest["channels"], manifest["image_size"]) == (3, SIDE)
    dif = enc.replace(out=str(tmp_path / "dif"), epsilon=8.0)
    with torch_threads(1):
        run_diffuse_stage(dif, str(tmp_path / "enc"), log=lambda _: None)
    _check_rgb_parquet(
        tmp_path / "dif" / "release" / "synthetic" / "part-0.parquet", 60, sorted(CLASSES)
    )
