"""Where a private training set comes from: one `DataSource` per input kind, one contract.

A source answers two kinds of question, and the split between them is the privacy boundary:

- `describe()` is *public*: the data set's ledger name, the record count, the declared class
  names, the channels and the image size after the transform. It may read structure (a file
  listing, container metadata, array headers, image headers: format, width, height, mode) and
  refuses malformed input with one DataError line before any ledger charge. It never decodes a
  pixel or reads a label value. Why structure may be read uncharged: it is what the custodian
  declares the data set to be (its format, not its content); a refusal releases nothing and
  writes nothing, and the guarantee is stated over well-formed inputs of the declared shape.
- `read()` is *private*: decoded pixels and labels. Only `PrivateTrainingSet.open` calls it,
  after checking an open ledger grant; a failure in it (a truncated payload, a label outside
  the declared set) settles the charge, since whether it fails depends on the records.

Image layout: `read()` returns uint8 (N, C, H, W) (C = 1 grey or 3 RGB, H = W = the chosen
`image_size`) and int64 labels in [0, num_classes); unlabelled data gets all-zero labels and
one class. `PrivateTrainingSet.open` squeezes grey to (N, H, W), which is what the built-in IDX
data sets and the models below have always used.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from tdpdm.data import storage
from tdpdm.data.catalog import DATASETS, get_spec
from tdpdm.data.errors import DataError
from tdpdm.data.loader import check_split_headers, load_split
from tdpdm.data.units import unit_ids

#: One class stands for "no labels": the generative models below are class-conditional.
UNLABELLED = ("unlabelled",)
#: Largest record count a source accepts (as for IDX files).
MAX_RECORDS = 10_000_000
#: A ledger name: lower case, digits, '.', '_' and '-'; it keys the per-data-set budget.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class SourceInfo:
    """A data set's public description (what planning and the report may use)."""

    name: str
    n_records: int
    declared_classes: tuple[str, ...] | None
    """Declared by the custodian (`--classes`, folder names, a Parquet ClassLabel) or None for
    unlabelled data: public metadata, and the report says it was treated so."""
    channels: int
    image_size: int

    @property
    def labelled(self) -> bool:
        return self.declared_classes is not None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes the models condition on (one placeholder when unlabelled)."""
        return self.declared_classes if self.declared_classes is not None else UNLABELLED

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)


class DataSource(ABC):
    """A private image data set; see the module docstring for what each method may read."""

    name: str

    @abstractmethod
    def describe(self) -> SourceInfo:
        """Public metadata after structural validation (no pixel, no label value)."""

    @abstractmethod
    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (N, C, H, W) and labels int64 (N,): private, under a grant only."""

    def check_units(self, by: str) -> None:
        """Structure only (before the charge): whether `by` gives every record a privacy unit
        (`tdpdm.data.units`). Inputs without units refuse."""
        raise DataError(
            f"{self.name}: --privacy-unit {by!r}: this input has no privacy units (give them as "
            "a Parquet/Arrow column, an .npz array or the API's units=)"
        )

    def read_units(self, by: str) -> np.ndarray:
        """Private, under a grant only: each record's unit id (int, (N,)), in `read` order."""
        self.check_units(by)
        raise NotImplementedError


class FileSource(DataSource):
    """A custodian's own data at one URI (a file or a folder), with what the custodian declares
    about it: the ledger name, the image size, the class names, the channels. Every file format
    takes these the same way; `describe` fills `_info` once."""

    def __init__(
        self,
        uri: str,
        *,
        name: str,
        image_size: int,
        classes: tuple[str, ...] | None = None,
        channels: int | None = None,
    ) -> None:
        self.uri, self.where = uri, storage.redact(uri)
        self.name = check_name(name, self.where)
        self.image_size, self.channels = image_size, channels
        self.declared = check_classes(classes, self.where)
        self._info: SourceInfo | None = None


def check_name(name: str, source: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DataError(
            f"{source}: data set name {name!r} must be 1-64 characters of a-z, 0-9, '.', '_' "
            "or '-' (it names the ledger's budget)"
        )
    return name


def name_from_uri(uri: str) -> str:
    """A ledger name from a data URI's last path segment (`.../Chest-XRays/` -> chest-xrays)."""
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".parquet", ".npz"):
        if last.lower().endswith(ext):
            last = last[: -len(ext)]
    name = re.sub(r"[^a-z0-9._-]+", "-", last.lower()).strip("-._")[:64]
    return name or "data"


def check_classes(classes: tuple[str, ...] | None, source: str) -> tuple[str, ...] | None:
    """Declared class names: distinct, non-empty, one line each; None means unlabelled."""
    if classes is None:
        return None
    names = tuple(classes)
    if not names:
        raise DataError(f"{source}: the declared class list is empty")
    if any(not isinstance(c, str) or not c.strip() or "\n" in c for c in names):
        raise DataError(f"{source}: class names must be non-empty one-line strings")
    if len(set(names)) != len(names):
        raise DataError(f"{source}: the declared class names are not distinct")
    return names


class IDXSource(DataSource):
    """A catalogued built-in (MNIST, Fashion-MNIST): IDX files, grey 28x28, 10 classes.

    Behaviour as before sources existed: headers checked before the charge, the label range
    inside it (`load_split`)."""

    def __init__(self, dataset: str, data_dir: str) -> None:
        self.spec = get_spec(dataset)
        self.name = dataset
        self.data_dir = data_dir

    def describe(self) -> SourceInfo:
        total = check_split_headers(self.name, self.data_dir, "train")
        if total == 0:
            raise DataError(f"{self.name}: the training split at {self.data_dir} is empty")
        h, w = self.spec.image_shape
        assert h == w, "catalogued images are square"
        return SourceInfo(self.name, total, self.spec.class_names, 1, h)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = load_split(self.name, self.data_dir, "train")
        if len(images) == 0:
            raise DataError(f"{self.name}: the training split at {self.data_dir} is empty")
        return images[:, None], labels


class ArraySource(DataSource):
    """Arrays already in memory (the Python API): uint8 (N, H, W), (N, H, W, C) or
    (N, C, H, W) with C in {1, 3}, square images; labels are integers or None.

    The arrays are private like any other records: `describe` looks at their dtype and shape
    only, and the label range is checked in `read`, under the grant."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        class_names: tuple[str, ...] | list[str] | None,
        name: str = "array",
        units: np.ndarray | None = None,
    ) -> None:
        self.name = check_name(name, "array data")
        self._images, self._labels, self._units = images, labels, units
        self._classes = check_classes(tuple(class_names) if class_names else None, self.name)

    def describe(self) -> SourceInfo:
        images, labels = self._images, self._labels
        where = f"{self.name} (arrays)"
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            kind = getattr(images, "dtype", type(images).__name__)
            raise DataError(f"{where}: images have dtype {kind}, expected uint8 pixels")
        chw = channels_first(images.shape, where)
        if labels is None and self._classes is not None:
            raise DataError(f"{where}: class names were declared but no labels given")
        if labels is not None:
            if self._classes is None:
                raise DataError(f"{where}: labels given without the declared class names")
            if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{where}: labels must be an integer array")
            if labels.shape != (images.shape[0],):
                raise DataError(
                    f"{where}: count mismatch: {images.shape[0]} images, labels of shape "
                    f"{labels.shape}"
                )
        if images.shape[0] == 0 or images.shape[0] > MAX_RECORDS:
            raise DataError(f"{where}: {images.shape[0]} records (need 1 to {MAX_RECORDS})")
        return SourceInfo(self.name, int(images.shape[0]), self._classes, chw[0], chw[1])

    def check_units(self, by: str) -> None:
        if by != "units" or self._units is None:
            super().check_units(by)
        if np.shape(self._units) != (self._images.shape[0],):
            raise DataError(f"{self.name} (arrays): units must hold one value per image")

    def read_units(self, by: str) -> np.ndarray:
        self.check_units(by)
        return unit_ids(np.asarray(self._units), self._images.shape[0], f"{self.name} (arrays)")

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        info = self.describe()
        images = to_nchw(self._images)
        labels = check_label_range(self._labels, info, f"{self.name} (arrays)")
        return np.ascontiguousarray(images), labels


def channels_first(shape: tuple[int, ...], where: str) -> tuple[int, int]:
    """(channels, side) of an image array shape (N, H, W), (N, H, W, C) or (N, C, H, W)."""
    if len(shape) == 3:
        c, h, w = 1, shape[1], shape[2]
    elif len(shape) == 4 and shape[3] in (1, 3):
        c, h, w = shape[3], shape[1], shape[2]
    elif len(shape) == 4 and shape[1] in (1, 3):
        c, h, w = shape[1], shape[2], shape[3]
    else:
        raise DataError(
            f"{where}: image array shape {tuple(shape)}: expected (N, H, W), (N, H, W, C) or "
            "(N, C, H, W) with C 1 or 3"
        )
    if h != w or not 1 <= h <= 4096:
        raise DataError(f"{where}: images are {h}x{w}; arrays must hold square images, 1-4096 px")
    return c, h


def to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) from any layout `channels_first` accepts (channels-last wins a tie)."""
    if images.ndim == 3:
        return images[:, None]
    return images.transpose(0, 3, 1, 2) if images.shape[3] in (1, 3) else images


def check_label_range(labels: np.ndarray | None, info: SourceInfo, where: str) -> np.ndarray:
    """int64 labels in [0, num_classes); zeros for unlabelled data. Called under the grant."""
    if labels is None:
        return np.zeros(info.n_records, dtype=np.int64)
    out = np.asarray(labels).astype(np.int64)
    if ((out < 0) | (out >= info.num_classes)).any():
        # No count, position or value: the labels are private records.
        raise DataError(
            f"{where}: labels outside the {info.num_classes} declared classes (how many and "
            "where is withheld: the labels are private)"
        )
    return out


def builtin_name(name: str) -> bool:
    return name in DATASETS
