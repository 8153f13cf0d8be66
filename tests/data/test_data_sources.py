"""The readers of the user's own data (issue 15): image folders, Hugging Face Parquet, `.npz`
and arrays read back what was written, through the fixed transform; hostile input is one
DataError line naming the file, before any charge where it is structural, and the pixels and
labels are only read under a grant."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sources_support import hf_parquet, npz_file, png_bytes, png_tree, tiny_images

from tdpdm.data.errors import DataError
from tdpdm.data.inputs import data_source
from tdpdm.data.private import PrivateAccessError, PrivateTrainingSet
from tdpdm.data.sources import ArraySource
from tdpdm.data.transform import ImageTransform

CLASSES = ("cat", "dog", "eel")


@dataclass
class Grant:
    dataset: str
    charge_id: str = "c1"
    active: bool = True

    def is_active(self) -> bool:
        return self.active


def _labels(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % len(CLASSES)


def _open(uri: Path | str, image_size: int = 12, **kwargs):
    return data_source(str(uri), name="mine", image_size=image_size, **kwargs)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


# -- reading back ------------------------------------------------------------------------------


def test_png_tree_reads_back_grey_images_and_folder_labels(tmp_path: Path) -> None:
    images, labels = tiny_images(9), _labels(9)
    source = _open(png_tree(tmp_path / "d", images, labels, CLASSES))
    info = source.describe()
    assert (info.n_records, info.channels, info.image_size) == (9, 1, 12)
    assert info.class_names == CLASSES and info.labelled
    got, got_labels = source.read()
    order = np.argsort(np.array([CLASSES[i] for i in labels]), kind="stable")  # folder order
    assert got.shape == (9, 1, 12, 12)
    np.testing.assert_array_equal(got[:, 0], images[order])
    np.testing.assert_array_equal(got_labels, labels[order])


def test_declared_classes_fix_the_label_order(tmp_path: Path) -> None:
    root = png_tree(tmp_path / "d", tiny_images(6), _labels(6), CLASSES)
    source = _open(root, classes=("eel", "dog", "cat"))
    _, labels = source.read()
    assert source.describe().class_names == ("eel", "dog", "cat")
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert labels.tolist() == sorted(labels.tolist())  # records in declared-class order


def test_rgb_folder_is_detected_and_resized(tmp_path: Path) -> None:
    root = png_tree(tmp_path / "d", tiny_images(4, rgb=True), _labels(4), CLASSES)
    source = _open(root, image_size=28)
    assert source.describe().channels == 3
    images, _ = source.read()
    assert images.shape == (4, 3, 28, 28) and images.dtype == np.uint8
    grey = _open(root, image_size=28, channels=1).read()[0]
    assert grey.shape == (4, 1, 28, 28)


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    source = _open(png_tree(tmp_path / "d", tiny_images(5), None))
    info = source.describe()
    assert not info.labelled and info.num_classes == 1
    images, labels = source.read()
    assert images.shape == (5, 1, 12, 12) and not labels.any()


def test_jpeg_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "d" / "cat").mkdir(parents=True)
    (tmp_path / "d" / "cat" / "a.jpg").write_bytes(png_bytes(tiny_images(1)[0], "JPEG"))
    images, labels = _open(tmp_path / "d").read()
    assert images.shape == (1, 1, 12, 12) and labels.tolist() == [0]


def test_hf_parquet_written_with_pyarrow(tmp_path: Path) -> None:
    images, labels = tiny_images(7), _labels(7)
    source = _open(hf_parquet(tmp_path / "d.parquet", images, labels, CLASSES))
    assert source.describe().class_names == CLASSES
    got, got_labels = source.read()
    np.testing.assert_array_equal(got[:, 0], images)
    np.testing.assert_array_equal(got_labels, labels)


def test_hf_parquet_folder_of_shards(tmp_path: Path) -> None:
    images, labels = tiny_images(6), _labels(6)
    (tmp_path / "d").mkdir()
    hf_parquet(tmp_path / "d" / "train-0.parquet", images[:4], labels[:4], CLASSES)
    hf_parquet(tmp_path / "d" / "train-1.parquet", images[4:], labels[4:], CLASSES)
    got, got_labels = _open(tmp_path / "d").read()
    np.testing.assert_array_equal(got[:, 0], images)
    np.testing.assert_array_equal(got_labels, labels)


def test_parquet_saved_by_the_datasets_library(tmp_path: Path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from PIL import Image

    images, labels = tiny_images(5, rgb=True), _labels(5)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))}
    )
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(im) for im in images], "label": labels.tolist()},
        features=features,
    )
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    source = _open(tmp_path / "hf.parquet")
    info = source.describe()
    assert info.class_names == CLASSES and info.channels == 3
    got, got_labels = source.read()
    np.testing.assert_array_equal(got.transpose(0, 2, 3, 1), images)
    np.testing.assert_array_equal(got_labels, labels)


def test_npz_with_and_without_labels(tmp_path: Path) -> None:
    images, labels = tiny_images(6), _labels(6)
    source = _open(npz_file(tmp_path / "d.npz", images, labels), classes=CLASSES)
    got, got_labels = source.read()
    np.testing.assert_array_equal(got[:, 0], images)
    np.testing.assert_array_equal(got_labels, labels)
    unlabelled = _open(npz_file(tmp_path / "u.npz", tiny_images(3, rgb=True)), image_size=8)
    got, got_labels = unlabelled.read()
    assert got.shape == (3, 3, 8, 8) and not got_labels.any()


def test_array_source_in_memory() -> None:
    images, labels = tiny_images(4, rgb=True), _labels(4)
    source = ArraySource(images, labels, CLASSES, name="api")
    got, got_labels = source.read()
    np.testing.assert_array_equal(got.transpose(0, 2, 3, 1), images)
    assert source.describe().name == "api" and got_labels.tolist() == labels.tolist()


def test_transform_is_fixed_and_data_independent() -> None:
    a = tiny_images(2, side=20)
    t = ImageTransform(1, 10)
    out = t.array(a[:, None])
    # image i's output depends on image i alone
    np.testing.assert_array_equal(out[1], t.array(a[1:, None])[0])


def test_records_stay_sealed_without_an_active_grant(tmp_path: Path) -> None:
    source = _open(png_tree(tmp_path / "d", tiny_images(4), _labels(4), CLASSES))
    records = PrivateTrainingSet(source)
    assert records.n_records() == 4 and records.dataset == "mine"
    with pytest.raises(PrivateAccessError):
        records.open(Grant("mine", active=False))
    with pytest.raises(PrivateAccessError):
        records.open(Grant("mnist"))
    assert records.reads == 0
    images, _ = records.open(Grant("mine"))
    assert images.shape == (4, 12, 12) and records.reads == 1  # grey: (N, H, W)


# -- hostile input -----------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def _tree(tmp_path: Path) -> Path:
    return png_tree(tmp_path / "d", tiny_images(6), _labels(6), CLASSES)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda r: (r / "cat" / "x.png").write_bytes(b"not a png at all"), "not a readable"),
        (lambda r: (r / "cat" / "notes.txt").write_text("hi"), "not an image file"),
        (lambda r: (r / "fox").mkdir(), "is empty"),
        (lambda r: (r / "cat" / "sub").mkdir(), "nested folder"),
        (lambda r: (r / "loose.png").write_bytes(png_bytes(tiny_images(1)[0])), "next to class"),
        (lambda r: (r / "cat" / "b.png").write_bytes(png_bytes(tiny_images(1, 13)[0])), "one size"),
        (lambda r: (r / "cat" / "huge.png").write_bytes(_png_header_only(9000, 9000)), "absurd"),
        (lambda r: (r / "cat" / "bomb.png").write_bytes(_png_header_only(99999, 99999)), "absurd"),
        (
            lambda r: (r / "cat" / "cmyk.jpg").write_bytes(
                png_bytes(np.zeros((12, 12, 4), np.uint8), "TIFF")
            ),
            "not a readable",
        ),
    ],
)
def test_structural_damage_is_refused_before_any_charge(tmp_path, damage, expected) -> None:
    root = _tree(tmp_path)
    damage(root)
    source = _open(root)
    with pytest.raises(DataError) as err:
        PrivateTrainingSet(source).n_records()  # what planning calls, before the charge
    message = _one_line(err)
    assert expected in message and str(root) in message


def test_folder_not_among_the_declared_classes(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        _open(_tree(tmp_path), classes=("cat", "dog")).describe()
    assert "not one of the 2 declared classes" in _one_line(err)
    with pytest.raises(DataError) as err:
        _open(_tree(tmp_path), classes=("cat", "dog", "eel", "fox")).describe()
    assert "has no folder" in _one_line(err)


def test_truncated_payload_fails_under_the_grant(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    whole = png_bytes(tiny_images(1, seed=5)[0])
    (root / "cat" / "cut.png").write_bytes(whole[: len(whole) - 30])
    records = PrivateTrainingSet(_open(root))
    assert records.n_records() == 7  # the header is fine
    with pytest.raises(DataError) as err:
        records.open(Grant("mine"))
    assert "cut.png" in _one_line(err) and records.reads == 1  # read: the charge settles


def test_npz_hostile_arrays(tmp_path: Path) -> None:
    nan = np.full((3, 12, 12), np.nan, dtype=np.float32)
    cases = {
        "nan.npz": ({"images": nan}, "expected uint8"),
        "lab.npz": ({"images": tiny_images(3), "labels": np.ones(3) * 0.5}, "expected integers"),
        "count.npz": ({"images": tiny_images(3), "labels": np.zeros(4, int)}, "count mismatch"),
        "shape.npz": ({"images": np.zeros((3, 12, 12, 5), np.uint8)}, "image array shape"),
        "none.npz": ({"pixels": tiny_images(3)}, "no 'images'"),
        "obj.npz": ({"images": np.array([None] * 3, dtype=object)}, "Python objects"),
    }
    for name, (arrays, expected) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError) as err:
            _open(tmp_path / name, classes=CLASSES).describe()
        message = _one_line(err)
        assert expected in message and name in message, (name, message)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(DataError) as err:
        _open(tmp_path / "junk.npz").describe()
    assert "not a readable .npz" in _one_line(err)


def test_labels_outside_the_declared_classes_fail_under_the_grant(tmp_path: Path) -> None:
    images = tiny_images(4)
    for uri in (
        npz_file(tmp_path / "d.npz", images, np.array([0, 1, 2, 7])),
        hf_parquet(tmp_path / "d.parquet", images, np.array([0, 1, 2, 7]), CLASSES),
    ):
        records = PrivateTrainingSet(_open(uri, classes=CLASSES))
        assert records.n_records() == 4
        with pytest.raises(DataError) as err:
            records.open(Grant("mine"))
        message = _one_line(err)
        assert "outside the 3 declared classes" in message
        assert "7" not in message.split("labels outside", 1)[1]  # (the tmp path may hold a 7)


def test_parquet_structure_is_checked(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"pixels": [b"x"]}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 not really")
    pq.write_table(pa.table({"image": [{"bytes": b"zz", "path": "p"}]}), tmp_path / "c.parquet")
    hf_parquet(tmp_path / "d.parquet", tiny_images(2), np.zeros(2, int), None)
    for name, expected in [
        ("a.parquet", "no 'image' column"),
        ("b.parquet", "not a readable Parquet"),
        ("c.parquet", "not a readable PNG or JPEG"),
        ("d.parquet", "declared class list is empty"),
    ]:
        with pytest.raises(DataError) as err:
            _open(tmp_path / name).describe()
        assert expected in _one_line(err), name


def test_missing_data_and_wrong_kinds(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data not found"):
        _open(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"not a folder, a \.parquet or a \.npz"):
        _open(tmp_path / "x.csv")
    with pytest.raises(DataError, match="data set name"):
        data_source(str(tmp_path), name="Bad Name", image_size=12)
    with pytest.raises(DataError, match="outside 8-512"):
        _open(_tree(tmp_path), image_size=4).describe()


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    deep = (np.arange(144, dtype=np.uint16).reshape(12, 12) * 400).astype(np.uint16)
    (tmp_path / "d" / "cat").mkdir(parents=True)
    Image.fromarray(deep).save(tmp_path / "d" / "cat" / "a.png")
    images, _ = _open(tmp_path / "d").read()
    np.testing.assert_array_equal(images[0, 0], (deep >> 8).astype(np.uint8))


def test_folder_saved_by_the_datasets_library(tmp_path: Path, monkeypatch) -> None:
    """`Dataset.save_to_disk`: state.json and Arrow stream shards, read like the Parquet."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    images, labels = tiny_images(5), _labels(5)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))}
    )
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(im) for im in images], "label": labels.tolist()},
        features=features,
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    source = _open(tmp_path / "saved")
    assert type(source).__name__ == "HFArrowSource"
    assert source.describe().class_names == CLASSES
    got, got_labels = source.read()
    np.testing.assert_array_equal(got[:, 0], images)
    np.testing.assert_array_equal(got_labels, labels)
    (tmp_path / "saved" / "state.json").write_text("{}")
    with pytest.raises(DataError, match=r"state\.json does not list"):
        _open(tmp_path / "saved").describe()


def test_built_ins_describe_their_shape_like_sources() -> None:
    """`RunContext.spec` is a catalog entry or a source's description: one set of attributes."""
    from tdpdm.data.catalog import get_spec

    spec = get_spec("fashion-mnist")
    assert (spec.channels, spec.image_size, spec.num_classes) == (1, 28, 10)
