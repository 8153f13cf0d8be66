"""Load a train or test split of a catalogued data set from a local path or URI.

Everything downstream (DP-SGD sampling rates, accounting, evaluation) assumes the arrays are
what the catalog says: so shapes, counts and label ranges are checked here, once, and a bad
copy fails with a DataError naming the file rather than as a shape error deep in training.
Checksums are not checked here: local copies may be re-compressed; downloads verify them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from tdpdm.data import storage
from tdpdm.data.catalog import DatasetSpec, get_spec
from tdpdm.data.errors import DataError
from tdpdm.data.idx import read_idx, read_idx_header

Split = Literal["train", "test"]


def candidate_dirs(spec: DatasetSpec, data_dir: str) -> list[str]:
    """Where a data set's files may be: data_dir itself, then data_dir/<dataset name>."""
    return [data_dir, storage.join(data_dir, spec.name)]


def find_file(spec: DatasetSpec, data_dir: str, key: str) -> str | None:
    """URI of ``<name>.gz`` or ``<name>`` for a file key, or None when absent."""
    name = spec.files[key]
    for base in candidate_dirs(spec, data_dir):
        for fname in (f"{name}.gz", name):
            uri = storage.join(base, fname)
            if storage.exists(uri) and not storage.isdir(uri):
                return uri
    return None


def find_split_files(dataset: str, data_dir: str, split: Split) -> tuple[str, str]:
    """(images URI, labels URI) of a split; DataError naming what is missing and where."""
    spec = get_spec(dataset)
    found: list[str] = []
    for key in spec.split_keys(split):
        uri = find_file(spec, data_dir, key)
        if uri is None:
            name = spec.files[key]
            raise DataError(
                f"{storage.redact(data_dir)}: missing {dataset} file {name}.gz (or {name}); "
                f"looked in {storage.redact(data_dir)} and {spec.name}/ under it"
            )
        found.append(uri)
    return found[0], found[1]


def check_split_headers(dataset: str, data_dir: str, split: Split) -> int:
    """The split's record count, after checking both files' headers (dtype, shape, counts)
    against the catalog without reading a record: a malformed data set (float pixels that may
    hold NaN/inf, wrong image size, empty, mismatched counts) is refused before any charge."""
    images_uri, labels_uri = find_split_files(dataset, data_dir, split)
    img_dtype, img_dims = read_idx_header(images_uri, expect_ndim=3)
    lab_dtype, lab_dims = read_idx_header(labels_uri, expect_ndim=1)
    _check_structure(dataset, (images_uri, img_dtype, img_dims), (labels_uri, lab_dtype, lab_dims))
    return lab_dims[0]


def _check_structure(
    dataset: str,
    images: tuple[str, np.dtype, tuple[int, ...]],
    labels: tuple[str, np.dtype, tuple[int, ...]],
) -> None:
    spec = get_spec(dataset)
    (img_uri, img_dtype, img_shape), (lab_uri, lab_dtype, lab_shape) = images, labels
    img_src, lab_src = storage.redact(img_uri), storage.redact(lab_uri)
    if img_dtype != np.uint8:
        raise DataError(
            f"{img_src}: images have dtype {img_dtype.newbyteorder('=')}, expected uint8 pixels"
        )
    if tuple(img_shape[1:]) != tuple(spec.image_shape):
        raise DataError(
            f"{img_src}: image shape {tuple(img_shape[1:])} does not match "
            f"{dataset}'s {tuple(spec.image_shape)}"
        )
    if not np.issubdtype(lab_dtype, np.integer):
        raise DataError(
            f"{lab_src}: labels have dtype {lab_dtype.newbyteorder('=')}, expected integers"
        )
    if img_shape[0] != lab_shape[0]:
        raise DataError(
            f"{img_src}: count mismatch: {img_shape[0]} images but {lab_shape[0]} labels in "
            f"{lab_src}"
        )


def load_split(dataset: str, data_dir: str, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, H, W) and labels as int64 (N,), validated against the catalog."""
    spec = get_spec(dataset)
    images_uri, labels_uri = find_split_files(dataset, data_dir, split)
    images = read_idx(images_uri, expect_ndim=3)
    labels = read_idx(labels_uri, expect_ndim=1)
    lab_src = storage.redact(labels_uri)
    _check_structure(
        dataset,
        (images_uri, images.dtype, images.shape),
        (labels_uri, labels.dtype, labels.shape),
    )
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= spec.num_classes)
    if bad.any():
        # No count, position or value: the labels are private records.
        raise DataError(
            f"{lab_src}: labels out of range [0, {spec.num_classes}) (how many and where is "
            "withheld: the labels are private)"
        )
    return images, labels
