"""Data layer: storage URIs, the IDX format, the data set catalog, loading and downloading,
and the sources of a private training set (`sources`: built-ins, arrays; `inputs.data_source`
for an image folder, Hugging Face Parquet or `.npz`, imported on use: Pillow and pyarrow).

The bottom floor of the package: it imports nothing from other tdpdm subpackages.
"""

from tdpdm.data.catalog import DATASETS, DatasetSpec, get_spec
from tdpdm.data.download import download, ensure_dataset
from tdpdm.data.errors import DataError
from tdpdm.data.idx import parse_idx, read_idx
from tdpdm.data.loader import find_split_files, load_split
from tdpdm.data.sources import ArraySource, DataSource, IDXSource, SourceInfo

__all__ = [
    "DATASETS",
    "ArraySource",
    "DataError",
    "DataSource",
    "DatasetSpec",
    "IDXSource",
    "SourceInfo",
    "download",
    "ensure_dataset",
    "find_split_files",
    "get_spec",
    "load_split",
    "parse_idx",
    "read_idx",
]
