"""An image folder, local or on an object store: `root/<class name>/<image>.png|.jpg`.

The usual class-subfolder layout: a subfolder is a class and its name is the class name (public
metadata the custodian declares; `--classes` may fix their order and must then name exactly the
subfolders). A folder holding image files and no subfolders is an unlabelled data set. Names
starting with '.' (`.DS_Store`, editor files) are not records and are skipped.

Before any charge (`describe`): the listing and each image's header (format, size, mode) are
checked: a file that is not a PNG or JPEG, a nested folder, an empty or undeclared class folder,
images of different sizes or of a mode the transform cannot read, or an absurd size is one
DataError naming the file. The pixels are decoded only in `read`, under the grant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from tdpdm.data import storage
from tdpdm.data.errors import DataError
from tdpdm.data.sources import (
    MAX_RECORDS,
    FileSource,
    SourceInfo,
)
from tdpdm.data.transform import (
    IMAGE_SUFFIXES,
    MAX_FILE_BYTES,
    Header,
    ImageTransform,
    probe_file,
    same_size,
)

T = TypeVar("T")
#: Files read at once (I/O bound: mostly waiting on the disk or the object store).
READERS = 8


class ImageFolderSource(FileSource):
    """Class-subfolder (or flat, unlabelled) image folder at `uri`."""

    _files: list[tuple[str, int]] | None = None
    """(image URI, label) of every record, once listed."""

    def _where(self, *parts: str) -> str:
        return storage.redact(storage.join(self.uri, *parts))

    def _listing(self) -> tuple[list[tuple[str, int]], tuple[str, ...] | None]:
        """(file URI, class index) of every record, and the class names (None: unlabelled)."""
        entries = [(n, d) for n, d in storage.list_entries(self.uri) if not n.startswith(".")]
        folders = [n for n, is_dir in entries if is_dir]
        loose = [n for n, is_dir in entries if not is_dir]
        if folders and loose:
            raise DataError(
                f"{self._where(loose[0])}: a file next to class folders; put every image in "
                "its class's folder (or use no folders for unlabelled data)"
            )
        if not folders:
            if self.declared is not None:
                raise DataError(
                    f"{self._where()}: classes were declared but there are no class folders"
                )
            return [(storage.join(self.uri, n), 0) for n in self._images(loose, ())], None
        classes = self.declared if self.declared is not None else tuple(folders)
        for folder in folders:
            if folder not in classes:
                raise DataError(
                    f"{self._where(folder)}: class folder {folder!r} is not one of the "
                    f"{len(classes)} declared classes"
                )
        files: list[tuple[str, int]] = []
        for index, cls in enumerate(classes):
            if cls not in folders:
                raise DataError(f"{self._where(cls)}: declared class {cls!r} has no folder")
            inside = [
                (n, d)
                for n, d in storage.list_entries(storage.join(self.uri, cls))
                if not n.startswith(".")
            ]
            nested = [n for n, d in inside if d]
            if nested:
                raise DataError(f"{self._where(cls, nested[0])}: nested folder inside a class")
            names = self._images([n for n, _ in inside], (cls,))
            if not names:
                raise DataError(f"{self._where(cls)}: class folder {cls!r} is empty")
            files.extend((storage.join(self.uri, cls, n), index) for n in names)
        return files, classes

    def _images(self, names: list[str], parent: tuple[str, ...]) -> list[str]:
        for n in names:
            if not n.lower().endswith(IMAGE_SUFFIXES):
                raise DataError(
                    f"{self._where(*parent, n)}: not an image file (expected "
                    f"{', '.join(IMAGE_SUFFIXES)})"
                )
        return names

    def describe(self) -> SourceInfo:
        if self._info is not None:
            return self._info
        files, classes = self._listing()
        if not files:
            raise DataError(f"{self._where()}: no images")
        if len(files) > MAX_RECORDS:
            raise DataError(f"{self._where()}: {len(files)} images, more than {MAX_RECORDS}")
        first: Header | None = None
        grey = True
        for (uri, _), header in zip(
            files, in_order(probe_file, [u for u, _ in files]), strict=True
        ):
            first = same_size(first, header, storage.redact(uri))
            grey = grey and header.channels == 1
        channels = self.channels or (1 if grey else 3)
        ImageTransform(channels, self.image_size)  # refuses a bad size or channel count
        self._files = files
        self._info = SourceInfo(self.name, len(files), classes, channels, self.image_size)
        return self._info

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        info = self.describe()
        assert self._files is not None
        transform = ImageTransform(info.channels, info.image_size)
        images = np.empty(
            (info.n_records, info.channels, info.image_size, info.image_size), np.uint8
        )
        labels = np.array([label for _, label in self._files], dtype=np.int64)

        def decoded(uri: str) -> np.ndarray:
            blob = storage.read_bytes(uri, max_bytes=MAX_FILE_BYTES)
            return transform.decode(blob, storage.redact(uri))

        for i, image in enumerate(in_order(decoded, [u for u, _ in self._files])):
            images[i] = image
        return images, labels


def in_order(fn: Callable[[str], T], uris: list[str]) -> Iterator[T]:
    """`fn` over many files on a few threads (object stores answer one request at a time per
    connection), results and the first failure in file order: the same as a plain loop."""
    pool = ThreadPoolExecutor(max_workers=READERS)
    try:
        yield from pool.map(fn, uris)
    finally:  # on a failure, files not yet started are not read
        pool.shutdown(wait=True, cancel_futures=True)
