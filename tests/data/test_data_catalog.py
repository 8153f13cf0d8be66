"""The catalog's names and checksums agree with the real files."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from tdpdm.data.catalog import DATASETS, FILE_KEYS, DatasetSpec, get_spec
from tdpdm.data.errors import DataError


def test_known_datasets_and_specs():
    assert set(DATASETS) == {"mnist", "fashion-mnist"}
    for spec in DATASETS.values():
        assert spec.image_shape == (28, 28) and spec.num_classes == 10
        assert len(spec.class_names) == 10
        assert (spec.train_size, spec.test_size) == (60_000, 10_000)
        assert spec.files == {
            "train-images": "train-images-idx3-ubyte",
            "train-labels": "train-labels-idx1-ubyte",
            "test-images": "t10k-images-idx3-ubyte",
            "test-labels": "t10k-labels-idx1-ubyte",
        }
        assert all(m.startswith(("http://", "https://")) and m.endswith("/") for m in spec.mirrors)
        for table in (spec.sha256, spec.mirror_sha256, spec.raw_sha256):
            assert set(table) == set(FILE_KEYS)
            assert all(len(h) == 64 and int(h, 16) >= 0 for h in table.values())
        hash(spec)  # frozen and hashable despite the dict fields
    assert get_spec("mnist").mirrors == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    )
    assert get_spec("fashion-mnist").class_names[-1] == "Ankle boot"


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DataError, match="known: fashion-mnist, mnist"):
        get_spec("cifar10")
    with pytest.raises(DataError, match="split"):
        get_spec("mnist").split_keys("validation")


def test_spec_rejects_inconsistent_definition():
    with pytest.raises(ValueError, match="class names"):
        DatasetSpec(name="x", class_names=("a",), sha256={}, mirrors=(), train_size=1, test_size=1)


def test_checksums_match_shared_sha256sums(shared_datasets):
    listed = {}
    for line in (shared_datasets / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        listed[rel] = digest
    for spec in DATASETS.values():
        for key, name in spec.files.items():
            assert spec.sha256[key] == listed[f"{spec.name}/{name}.gz"]


def test_raw_checksums_match_decompressed_shared_files(shared_datasets):
    for spec in DATASETS.values():
        for key, name in spec.files.items():
            blob = (shared_datasets / spec.name / f"{name}.gz").read_bytes()
            assert hashlib.sha256(blob).hexdigest() == spec.sha256[key]
            raw = gzip.decompress(blob)
            assert hashlib.sha256(raw).hexdigest() == spec.raw_sha256[key]
