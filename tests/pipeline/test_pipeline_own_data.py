"""Issue 15 end to end: your own images (a PNG class-folder export of real Fashion-MNIST, a few
hundred records) through the whole run, charged and released like the built-in IDX path; and a
hostile or unsupported folder refused before any charge (exit 2, ledger and outputs untouched).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from tdpdm_test_support import tiny_run_overrides, torch_threads

from tdpdm.cli import main
from tdpdm.config import load_config
from tdpdm.data.catalog import get_spec
from tdpdm.data.errors import DataError
from tdpdm.data.loader import load_split
from tdpdm.data.private import PrivateTrainingSet
from tdpdm.data.sources import ArraySource
from tdpdm.pipeline import run_pipeline
from tdpdm.privacy.events import event_to_dict
from tdpdm.privacy.ledger import Ledger
from tdpdm.report.schema import validate_report

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RECORDS = 300
CLASSES = tuple(
    n.lower().replace("/", "-").replace(" ", "-") for n in get_spec("fashion-mnist").class_names
)


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def fashion_pngs(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first RECORDS Fashion-MNIST training images as root/<class>/<i>.png."""
    images, labels = load_split("fashion-mnist", str(shared_datasets), "train")
    root = tmp_path_factory.mktemp("own") / "fashion-png"
    for i in range(RECORDS):
        folder = root / CLASSES[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(png_bytes(images[i]))
    return root


def _overrides(tmp_path: Path, data: Path) -> dict:
    base = tiny_run_overrides(tmp_path, "unused", "private", subset=None, delta=1e-4)
    del base["dataset"]  # named after the folder: fashion-png
    return {
        **base,
        "data": str(data),
        "stage2.private_model": "dp-moments",
        "evaluation.synthetic_count": 100,
    }


def test_png_folder_runs_end_to_end_under_its_own_budget(tmp_path: Path, fashion_pngs: Path):
    cfg = load_config(None, _overrides(tmp_path, fashion_pngs))
    assert cfg.dataset == "fashion-png" and cfg.classes is None
    with torch_threads(1):
        result = run_pipeline(cfg, log=lambda _: None)
    report = json.loads((Path(cfg.out) / "release" / "report.json").read_text())
    validate_report(report)
    assert report["dataset"] == "fashion-png" and report["n_records"] == RECORDS
    ledger = Ledger(cfg.ledger)
    [charge] = ledger.charges("fashion-png")
    assert charge.status == "settled" and charge.charge_id == report["privacy"]["charge_id"]
    assert [event_to_dict(e) for e in charge.spent] == report["privacy"]["events"]
    assert ledger.charges("fashion-mnist") == [] and ledger.budget("fashion-mnist") is None
    assert ledger.spent("fashion-png").epsilon <= cfg.epsilon
    synthetic = pq.read_table(Path(cfg.out) / "release" / "synthetic" / "part-0.parquet")
    assert synthetic.num_rows == 100
    assert result.epsilon <= cfg.epsilon
    assert any("label set" in item for item in report["privacy"]["not_covered"])
    # The class names (the folder names) are the public label set of the release.
    assert CLASSES[0] in json.dumps(json.loads(synthetic.schema.metadata[b"huggingface"]))


@pytest.mark.parametrize("layout", ["three-classes", "unlabelled"])
def test_class_count_comes_from_the_data(tmp_path: Path, fashion_pngs: Path, layout: str) -> None:
    """Three declared classes (a subset of the folders' classes), or no labels at all: the
    models, the sampler and the release take the class count from the source."""
    import shutil

    root = tmp_path / layout
    if layout == "three-classes":
        for name in CLASSES[:3]:
            shutil.copytree(fashion_pngs / name, root / name)
        extra = {"classes": list(CLASSES[2::-1])}
    else:
        root.mkdir()
        for png in fashion_pngs.glob("*/*.png"):
            shutil.copy(png, root / png.name)
        extra = {}
    cfg = load_config(None, {**_overrides(tmp_path, root), **extra})
    with torch_threads(1):
        result = run_pipeline(cfg, log=lambda _: None)
    synthetic = pq.read_table(Path(cfg.out) / "release" / "synthetic" / "part-0.parquet")
    names = json.loads(synthetic.schema.metadata[b"huggingface"])["info"]["features"]["label"]
    expected = list(CLASSES[2::-1]) if layout == "three-classes" else ["unlabelled"]
    assert names["names"] == expected
    assert set(synthetic.column("label").to_pylist()) <= set(range(len(expected)))
    assert result.report["dataset"] == layout


def test_arrays_handed_in_run_under_their_own_name(tmp_path: Path, shared_datasets: Path) -> None:
    """The Python API's path: arrays in memory (`ArraySource`), no `data:` in the config."""
    images, labels = load_split("fashion-mnist", str(shared_datasets), "train")
    source = ArraySource(images[:RECORDS], labels[:RECORDS], CLASSES, name="api-fashion")
    overrides = _overrides(tmp_path, tmp_path)
    del overrides["data"]
    cfg = load_config(None, {**overrides, "dataset": "api-fashion"})
    with torch_threads(1):
        result = run_pipeline(cfg, log=lambda _: None, records=PrivateTrainingSet(source))
    assert result.report["dataset"] == "api-fashion" and result.report["n_records"] == RECORDS
    [charge] = Ledger(cfg.ledger).charges("api-fashion")
    assert charge.status == "settled"
    wrong = load_config(None, {**overrides, "dataset": "other"})
    with pytest.raises(DataError, match="handed in are data set 'api-fashion'"):
        run_pipeline(wrong, log=lambda _: None, records=PrivateTrainingSet(source))


def test_audit_on_your_own_data(tmp_path: Path, fashion_pngs: Path) -> None:
    """The canary audit appends its canaries to your images and charges your data's budget."""
    from tdpdm.audit.run import run_audit

    cfg = load_config(None, _overrides(tmp_path, fashion_pngs))
    with torch_threads(1):
        result = run_audit(cfg, canaries=10, log=lambda _: None)
    assert result.lower_bound <= result.claimed
    [charge] = Ledger(cfg.ledger).charges("fashion-png")
    assert charge.status == "settled"


def test_a_name_neither_built_in_nor_given_is_refused(tmp_path: Path, capsys) -> None:
    ledger = tmp_path / "ledger.json"
    code = main(["run", "--set", "dataset=foo", "--ledger", str(ledger), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'foo' is not built in" in err[0], err
    assert not ledger.exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda r: (r / CLASSES[0] / "bad.png").write_bytes(b"\x89PNG garbage"), "bad.png"),
        (lambda r: (r / "extra").mkdir(), "is empty"),
        (lambda r: (r / CLASSES[1] / "readme.txt").write_text("x"), "not an image file"),
    ],
)
def test_hostile_folder_is_refused_before_any_charge(
    tmp_path: Path, fashion_pngs: Path, capsys, damage, expected
) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(fashion_pngs, root)
    damage(root)
    ledger, out = tmp_path / "ledger.json", tmp_path / "out"
    code = main(
        [
            "run",
            "--data",
            str(root),
            "--ledger",
            str(ledger),
            "--out",
            str(out),
            "--no-progress",
            "--subset",
            "all",
            "--delta",
            "1e-4",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not ledger.exists() and not out.exists()


def test_a_side_the_autoencoder_cannot_take_is_refused_before_any_charge(
    tmp_path: Path, fashion_pngs: Path, capsys
) -> None:
    ledger = tmp_path / "ledger.json"
    code = main(
        [
            "run",
            "--data",
            str(fashion_pngs),
            "--image-size",
            "30",
            "--ledger",
            str(ledger),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "must be a multiple of 4" in err[0], err
    assert not ledger.exists() and not (tmp_path / "out").exists()
