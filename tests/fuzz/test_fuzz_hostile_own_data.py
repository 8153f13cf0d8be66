"""Hostile input of your own data (issue 15) end to end through `tdpdm.cli.main`, as
test_fuzz_hostile_cli.py does for the IDX files: each structural problem of an image folder, a
Hugging Face Parquet file or a `.npz` is one `tdpdm: error:` line, exit 2, and the ledger, the
output folder and the data are byte for byte as they were.

The exception, stated where it happens: a label outside the declared classes can only be seen
by reading the labels, which are private, so it is found under the charge; the charge is then
settled at its full plan and the line withholds how many labels are bad, where and their values.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tdpdm.cli import EXIT_USER_ERROR, main
from tdpdm.privacy.ledger import Ledger

pytestmark = pytest.mark.timeout(600)

N, CLASSES = 60, ("a", "b", "c")


def _png(seed: int, side: int = 28) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _header_only_png(side: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _folder(root: Path) -> Path:
    for i in range(N):
        (root / CLASSES[i % 3]).mkdir(parents=True, exist_ok=True)
        (root / CLASSES[i % 3] / f"{i:03d}.png").write_bytes(_png(i))
    return root


def _parquet(path: Path, names: list[str], columns: dict | None = None) -> Path:
    image = pa.array(
        [{"bytes": _png(i), "path": None} for i in range(N)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    table = pa.table(columns or {"image": image, "label": pa.array(np.arange(N) % 3)})
    features = {"label": {"_type": "ClassLabel", "names": names}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def _npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, images=images, labels=labels)
    return path


GOOD_IMAGES = np.zeros((N, 28, 28), np.uint8)
GOOD_LABELS = np.arange(N) % 3

CASES = {
    "corrupt-png": (
        lambda t: _folder(t / "d"),
        lambda d: (d / "a" / "999.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"),
        "999.png: not a readable PNG or JPEG",
        [],
    ),
    "not-an-image": (
        lambda t: _folder(t / "d"),
        lambda d: (d / "b" / "notes.csv").write_text("x,y"),
        "notes.csv: not an image file",
        [],
    ),
    "empty-class": (lambda t: _folder(t / "d"), lambda d: (d / "z").mkdir(), "is empty", []),
    "undeclared-class": (
        lambda t: _folder(t / "d"),
        lambda d: None,
        "is not one of the 2 declared classes",
        ["--classes", "a,b"],
    ),
    "mixed-sizes": (
        lambda t: _folder(t / "d"),
        lambda d: (d / "c" / "big.png").write_bytes(_png(1, side=30)),
        "every image must have one size",
        [],
    ),
    "absurd-size": (
        lambda t: _folder(t / "d"),
        lambda d: (d / "c" / "huge.png").write_bytes(_header_only_png(60000)),
        "absurd image size",
        [],
    ),
    "npz-nan-floats": (
        lambda t: _npz(t / "d.npz", np.full((N, 28, 28), np.nan, np.float32), GOOD_LABELS),
        lambda d: None,
        "expected uint8 pixels",
        ["--classes", "a,b,c"],
    ),
    "npz-float-labels": (
        lambda t: _npz(t / "d.npz", GOOD_IMAGES, GOOD_LABELS + 0.5),
        lambda d: None,
        "labels have dtype float64, expected integers",
        ["--classes", "a,b,c"],
    ),
    "parquet-no-image": (
        lambda t: _parquet(t / "d.parquet", list(CLASSES), {"pixels": pa.array([b"x"] * N)}),
        lambda d: None,
        "no 'image' column",
        [],
    ),
    "parquet-classes-differ": (
        lambda t: _parquet(t / "d.parquet", list(CLASSES)),
        lambda d: None,
        "differ from the file's ClassLabel names",
        ["--classes", "x,y,z"],
    ),
}


def _snapshot(*roots: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = None
        elif root.is_file():
            out[str(root)] = root.read_bytes()
        else:
            for path in sorted(root.rglob("*")):
                out[str(path)] = path.read_bytes() if path.is_file() else b"<dir>"
    return out


def _argv(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--data",
        str(data),
        "--ledger",
        str(tmp_path / "ledger.json"),
        "--out",
        str(tmp_path / "out"),
        "--subset",
        "all",
        "--delta",
        "1e-3",
        "--epsilon",
        "4",
        "--no-progress",
        "--set",
        "stage1.epochs=1",
        "--set",
        "stage2.epochs=1",
        "--set",
        "evaluation.synthetic_count=30",
        *extra,
    ]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR, err
    assert "Traceback" not in err and lines[-1].startswith("tdpdm: error:"), err
    assert [line for line in lines if line.startswith("tdpdm: error:")] == [lines[-1]], err
    return lines[-1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_own_data_is_refused_before_any_charge(case, tmp_path: Path, capsys) -> None:
    build, damage, problem, flags = CASES[case]
    data = build(tmp_path)
    damage(data)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier-run.txt").write_text("must survive")
    Ledger(str(tmp_path / "ledger.json")).set_budget(data.stem, 8.0, 1e-3, "add_remove")
    before = _snapshot(tmp_path / "ledger.json", tmp_path / "out", data)
    line = _refused(capsys, _argv(data, tmp_path, *flags))
    assert problem in line, line
    assert _snapshot(tmp_path / "ledger.json", tmp_path / "out", data) == before


def test_labels_outside_the_declared_classes_settle_the_charge(tmp_path: Path, capsys) -> None:
    labels = GOOD_LABELS.copy()
    labels[[4, 17]] = [7, 250]
    data = _npz(tmp_path / "d.npz", GOOD_IMAGES, labels)
    line = _refused(capsys, _argv(data, tmp_path, "--classes", "a,b,c"))
    assert "labels outside the 3 declared classes" in line and "withheld" in line
    message = line.split("labels outside", 1)[1]  # after the file path (a tmp path has digits)
    assert not any(ch.isdigit() for ch in message.replace("3 declared", "")), line
    assert not (tmp_path / "out").exists()
    [charge] = Ledger(str(tmp_path / "ledger.json")).charges("d")
    assert charge.status == "settled"  # the labels were read: charged at the full plan
