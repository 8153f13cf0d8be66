"""`--data`: which reader a path or URI needs, by its name and its listing (never its content).

`x.npz` is a NumPy archive, `x.parquet` (or a folder of `.parquet` shards) the Hugging Face
image layout, a folder that `datasets.Dataset.save_to_disk` wrote (state.json and .arrow
shards) the same layout in Arrow, any other folder an image folder (class subfolders, or flat
and unlabelled).
"""

from __future__ import annotations

from tdpdm.data import storage
from tdpdm.data.errors import DataError
from tdpdm.data.hf_parquet import HFArrowSource, HFParquetSource
from tdpdm.data.image_folder import ImageFolderSource
from tdpdm.data.npz import NpzSource
from tdpdm.data.sources import DataSource


def data_source(
    uri: str,
    *,
    name: str,
    image_size: int,
    classes: tuple[str, ...] | None = None,
    channels: int | None = None,
) -> DataSource:
    """The source reading `uri`; nothing but the name and, for a folder, its listing is read."""
    kwargs = {"name": name, "image_size": image_size, "classes": classes, "channels": channels}
    lower = uri.lower().rstrip("/")
    if lower.endswith(".npz"):
        return NpzSource(uri, **kwargs)
    if lower.endswith(".parquet"):
        return HFParquetSource(uri, **kwargs)
    if not storage.isdir(uri):
        where = storage.redact(uri)
        if storage.exists(uri):
            raise DataError(f"{where}: not a folder, a .parquet or a .npz file")
        raise DataError(f"{where}: data not found")
    entries = [(n, d) for n, d in storage.list_entries(uri) if not n.startswith(".")]
    if ("state.json", False) in entries and any(n.endswith(".arrow") for n, _ in entries):
        return HFArrowSource(uri, **kwargs)  # what `datasets.Dataset.save_to_disk` writes
    if entries and all(not d and n.endswith(".parquet") for n, d in entries):
        return HFParquetSource(uri, **kwargs)
    return ImageFolderSource(uri, **kwargs)
