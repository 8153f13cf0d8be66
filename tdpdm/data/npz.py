"""A NumPy `.npz` archive with `images` (uint8: (N, H, W), (N, H, W, C) or (N, C, H, W), C 1
or 3) and optionally `labels` (integers, (N,)); class names from `--classes`.

Before any charge (`describe`): the archive's member list and each array's `.npy` header
(dtype, shape), read without loading the data. Float images are refused on their dtype, so a
NaN is never looked at; pickled object arrays are never loaded. Pixels and label values are
read in `read`, under the grant.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from tdpdm.data import storage
from tdpdm.data.errors import DataError
from tdpdm.data.sources import (
    MAX_RECORDS,
    FileSource,
    SourceInfo,
    channels_first,
    check_label_range,
    to_nchw,
)
from tdpdm.data.transform import ImageTransform
from tdpdm.data.units import unit_ids

#: Largest archive read, and largest uncompressed member.
MAX_NPZ_BYTES = 8 << 30


def _header(archive: zipfile.ZipFile, member: str, where: str) -> tuple[np.dtype, tuple]:
    try:
        with archive.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except Exception as err:
        raise DataError(
            f"{where}: {member} is not a readable .npy array ({type(err).__name__})"
        ) from None
    if dtype.hasobject:
        raise DataError(f"{where}: {member} holds Python objects; only numeric arrays are read")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > archive.getinfo(member).file_size:
        raise DataError(
            f"{where}: {member} declares shape {tuple(shape)} ({declared} bytes), more than the "
            "archive holds (absurd size or truncated)"
        )
    return dtype, tuple(shape)


class NpzSource(FileSource):
    """`images` and optional `labels` arrays in one `.npz` file."""

    def _archive(self) -> zipfile.ZipFile:
        raw = storage.read_bytes(self.uri, max_bytes=MAX_NPZ_BYTES)
        try:
            return zipfile.ZipFile(io.BytesIO(raw))
        except Exception as err:
            raise DataError(
                f"{self.where}: not a readable .npz archive ({type(err).__name__})"
            ) from None

    def describe(self) -> SourceInfo:
        if self._info is not None:
            return self._info
        archive = self._archive()
        members = set(archive.namelist())
        if "images.npy" not in members:
            raise DataError(f"{self.where}: no 'images' array in the archive")
        img_dtype, img_shape = _header(archive, "images.npy", self.where)
        if img_dtype != np.uint8:
            raise DataError(f"{self.where}: images have dtype {img_dtype}, expected uint8 pixels")
        channels, side = channels_first(img_shape, self.where)
        n = img_shape[0]
        if not 1 <= n <= MAX_RECORDS:
            raise DataError(f"{self.where}: {n} images (need 1 to {MAX_RECORDS})")
        if "labels.npy" in members:
            lab_dtype, lab_shape = _header(archive, "labels.npy", self.where)
            if not np.issubdtype(lab_dtype, np.integer):
                raise DataError(f"{self.where}: labels have dtype {lab_dtype}, expected integers")
            if lab_shape != (n,):
                raise DataError(
                    f"{self.where}: count mismatch: {n} images but labels of shape {lab_shape}"
                )
            classes = self.declared
            if classes is None:
                raise DataError(
                    f"{self.where}: the archive has labels: declare the classes (--classes)"
                )
        elif self.declared is not None:
            raise DataError(f"{self.where}: classes were declared but there is no 'labels' array")
        else:
            classes = None
        del side  # any size: the transform resizes
        out_channels = self.channels or channels
        ImageTransform(out_channels, self.image_size)
        self._info = SourceInfo(self.name, n, classes, out_channels, self.image_size)
        return self._info

    def check_units(self, by: str) -> None:
        n = self.describe().n_records
        archive = self._archive()
        if f"{by}.npy" not in set(archive.namelist()):
            raise DataError(f"{self.where}: --privacy-unit {by!r}: no {by!r} array in the archive")
        _dtype, shape = _header(archive, f"{by}.npy", self.where)
        if shape != (n,):
            raise DataError(f"{self.where}: the {by!r} array has shape {shape}, expected ({n},)")

    def read_units(self, by: str) -> np.ndarray:
        self.check_units(by)
        try:
            with self._archive().open(f"{by}.npy") as fh:
                values = np.lib.format.read_array(fh, allow_pickle=False)
        except Exception as err:
            raise DataError(f"{self.where}: corrupt array data ({type(err).__name__})") from None
        return unit_ids(values, self.describe().n_records, self.where)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        info = self.describe()
        archive = self._archive()
        try:
            with archive.open("images.npy") as fh:
                images = np.lib.format.read_array(fh, allow_pickle=False)
            labels = None
            if info.labelled:
                with archive.open("labels.npy") as fh:
                    labels = np.lib.format.read_array(fh, allow_pickle=False)
        except Exception as err:
            raise DataError(f"{self.where}: corrupt array data ({type(err).__name__})") from None
        if images.shape[0] != info.n_records:
            raise DataError(f"{self.where}: the archive changed while being read")
        transform = ImageTransform(info.channels, info.image_size)
        out = transform.array(np.ascontiguousarray(to_nchw(images)))
        return out, check_label_range(labels, info, self.where)
