"""Parquet in the Hugging Face `datasets` image layout: an `image` struct column holding the
encoded file's `bytes` (and a `path`), an optional integer `label` column. What
`datasets.Dataset.to_parquet` writes, and what the Hub serves, is read as is: the class names come
from the `label` feature's ClassLabel in the schema metadata (`huggingface` key), or from
`--classes`. A URI is one `.parquet` file or a folder of them (shards, read in name order).

Before any charge (`describe`): the footer (row count, schema, declared class names) and each
image's header, as for an image folder. Pixels and label values are read in `read`, under the
grant; labels outside the declared classes or missing fail there (and the charge is settled).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tdpdm.data import storage
from tdpdm.data.errors import DataError
from tdpdm.data.sources import (
    MAX_RECORDS,
    FileSource,
    SourceInfo,
    check_classes,
    check_label_range,
)
from tdpdm.data.transform import MAX_FILE_BYTES, Header, ImageTransform, probe, same_size
from tdpdm.data.units import unit_ids

#: Largest Parquet file read (images are in it).
MAX_PARQUET_BYTES = 4 << 30


def parquet_files(uri: str) -> list[str]:
    """The `.parquet` files of a URI: itself, or those directly inside a folder."""
    if not storage.isdir(uri):
        return [uri]
    names = [n for n, d in storage.list_entries(uri) if not d and n.endswith(".parquet")]
    if not names:
        raise DataError(f"{storage.redact(uri)}: no .parquet files in this folder")
    return [storage.join(uri, n) for n in names]


def _footer(uri: str) -> pq.FileMetaData:
    fs, path = storage.resolve(uri)
    try:
        with fs.open(path, "rb") as fh:
            return pq.ParquetFile(fh).metadata
    except FileNotFoundError:
        raise DataError(f"{storage.redact(uri)}: not found") from None
    except Exception as err:  # hostile footers raise many Arrow and OS types
        raise DataError(
            f"{storage.redact(uri)}: not a readable Parquet file ({type(err).__name__})"
        ) from None


def _hf_class_names(schema: pa.Schema, where: str) -> tuple[str, ...] | None:
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        label = features.get("label") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DataError(f"{where}: the 'huggingface' schema metadata is not readable") from None
    if label.get("_type") != "ClassLabel":
        return None
    names = label.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: the label feature's ClassLabel has no list of names")
    return tuple(names)


def _check_schema(schema: pa.Schema, where: str) -> bool:
    """Whether the file has labels, after checking the image (and label) columns' types."""
    if "image" not in schema.names:
        raise DataError(f"{where}: no 'image' column (expected the Hugging Face image layout)")
    kind = schema.field("image").type
    if not (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0):
        raise DataError(f"{where}: column 'image' is {kind}, expected struct<bytes, path>")
    if not pa.types.is_binary(kind.field("bytes").type) and not pa.types.is_large_binary(
        kind.field("bytes").type
    ):
        raise DataError(f"{where}: image.bytes is {kind.field('bytes').type}, expected binary")
    if "label" not in schema.names:
        return False
    if not pa.types.is_integer(schema.field("label").type):
        raise DataError(
            f"{where}: column 'label' is {schema.field('label').type}, expected integers"
        )
    return True


class HFParquetSource(FileSource):
    """One Parquet file or a folder of shards in the Hugging Face image layout."""

    def _files(self) -> list[str]:
        return parquet_files(self.uri)

    def _meta(self, uri: str) -> tuple[int, pa.Schema]:
        """(row count, schema) from the footer alone."""
        meta = _footer(uri)
        return meta.num_rows, meta.schema.to_arrow_schema()

    def _columns(self, uri: str, columns: list[str]) -> pa.Table:
        raw = storage.read_bytes(uri, max_bytes=MAX_PARQUET_BYTES)
        try:
            return pq.read_table(io.BytesIO(raw), columns=columns)
        except Exception as err:
            raise DataError(
                f"{storage.redact(uri)}: not a readable Parquet file ({type(err).__name__})"
            ) from None

    def describe(self) -> SourceInfo:
        if self._info is not None:
            return self._info
        files = self._files()
        total, labelled, named, grey = 0, None, None, True
        first: Header | None = None
        for uri in files:
            where = storage.redact(uri)
            num_rows, schema = self._meta(uri)
            has_labels = _check_schema(schema, where)
            if labelled is not None and has_labels != labelled:
                raise DataError(f"{where}: some shards have a 'label' column and some do not")
            labelled = has_labels
            names = _hf_class_names(schema, where)
            if names is not None and named is not None and names != named:
                raise DataError(f"{where}: the shards declare different class names")
            named = names if names is not None else named
            total += num_rows
            if total > MAX_RECORDS:
                raise DataError(f"{where}: more than {MAX_RECORDS} rows")
            images = self._columns(uri, ["image"]).column("image").combine_chunks()
            blobs = images.field("bytes")
            if images.null_count or blobs.null_count:
                raise DataError(
                    f"{where}: some rows have no image bytes (paths alone are not read)"
                )
            for blob in blobs.to_pylist():
                if len(blob) > MAX_FILE_BYTES:
                    raise DataError(f"{where}: an image of {len(blob)} bytes is over the limit")
                header = probe(blob, f"{where} (an image)")
                first = same_size(first, header, where)
                grey = grey and header.channels == 1
        if total == 0:
            raise DataError(f"{storage.redact(self.uri)}: no rows")
        classes = self._classes(bool(labelled), named)
        channels = self.channels or (1 if grey else 3)
        ImageTransform(channels, self.image_size)
        self._info = SourceInfo(self.name, total, classes, channels, self.image_size)
        return self._info

    def _classes(self, labelled: bool, named: tuple[str, ...] | None) -> tuple[str, ...] | None:
        where = storage.redact(self.uri)
        if not labelled:
            if self.declared is not None:
                raise DataError(f"{where}: classes were declared but there is no 'label' column")
            return None
        if self.declared is not None and named is not None and self.declared != named:
            raise DataError(
                f"{where}: the declared classes differ from the file's ClassLabel names"
            )
        classes = self.declared or check_classes(named, where)
        if classes is None:
            raise DataError(
                f"{where}: the 'label' column has no ClassLabel names; declare them (--classes)"
            )
        return classes

    def check_units(self, by: str) -> None:
        self.describe()
        for uri in self._files():
            if by not in self._meta(uri)[1].names:
                raise DataError(f"{storage.redact(uri)}: --privacy-unit {by!r}: no such column")

    def read_units(self, by: str) -> np.ndarray:
        self.check_units(by)
        parts = [self._columns(uri, [by]).column(by).to_pylist() for uri in self._files()]
        values = np.array([v for part in parts for v in part], dtype=object)
        return unit_ids(values, self.describe().n_records, storage.redact(self.uri))

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        info = self.describe()
        transform = ImageTransform(info.channels, info.image_size)
        images = np.empty(
            (info.n_records, info.channels, info.image_size, info.image_size), np.uint8
        )
        labels: list[np.ndarray] = []
        at = 0
        for uri in self._files():
            where = storage.redact(uri)
            table = self._columns(uri, ["image", "label"] if info.labelled else ["image"])
            for blob in table.column("image").combine_chunks().field("bytes").to_pylist():
                images[at] = transform.decode(blob, f"{where} (an image)")
                at += 1
            if info.labelled:
                column = table.column("label")
                if column.null_count:
                    raise DataError(f"{where}: missing labels (which is withheld: private)")
                labels.append(column.to_numpy())
        if at != info.n_records:
            raise DataError(f"{storage.redact(self.uri)}: the files changed while being read")
        joined = np.concatenate(labels) if info.labelled else None
        return images, check_label_range(joined, info, storage.redact(self.uri))


class HFArrowSource(HFParquetSource):
    """A data set saved by `datasets.Dataset.save_to_disk`: a folder with `state.json` and
    Arrow stream shards (`data-*.arrow`, in the order `state.json` lists them), same columns.
    An Arrow stream has no footer: the row count and schema come from reading a shard whole
    (the pixels in it are only parsed to image headers before the charge, as for Parquet)."""

    def _files(self) -> list[str]:
        where = storage.redact(self.uri)
        try:
            state = json.loads(storage.read_bytes(storage.join(self.uri, "state.json"), 1 << 20))
            names = [f["filename"] for f in state["_data_files"]]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{where}: state.json does not list the data files") from None
        if not names or not all(isinstance(n, str) and n.endswith(".arrow") for n in names):
            raise DataError(f"{where}: state.json lists no .arrow data files")
        return [storage.join(self.uri, n) for n in names]

    def _meta(self, uri: str) -> tuple[int, pa.Schema]:
        table = self._columns(uri, None)
        return table.num_rows, table.schema

    def _columns(self, uri: str, columns: list[str] | None) -> pa.Table:
        raw = storage.read_bytes(uri, max_bytes=MAX_PARQUET_BYTES)
        try:
            table = pa.ipc.open_stream(raw).read_all()
            return table if columns is None else table.select(columns)
        except Exception as err:
            raise DataError(
                f"{storage.redact(uri)}: not a readable Arrow stream ({type(err).__name__})"
            ) from None
