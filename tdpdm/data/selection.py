"""Which data a run reads (`dataset`, `data`, `data_test`, `image_size`, `classes`, `channels`),
checked as a whole: the rules the config applies, kept next to the sources they describe.

`dataset` is the ledger's name for the data set (its budget). A built-in (`mnist`,
`fashion-mnist`) is read from `data_dir`; your own images come from `data`, and `dataset` then
names them (by default from the path). A built-in's name is refused with `data`: the run would
spend the built-in's budget on other records. Without `data`, a name that is not built in is
left to the run: the Python API hands its records in (`tdpdm.data.sources.ArraySource`), and a
run without records refuses it before anything is charged (`unknown_dataset`).
"""

from __future__ import annotations

from typing import Any

from tdpdm.data import storage
from tdpdm.data.catalog import DATASETS
from tdpdm.data.sources import NAME_RE, name_from_uri

#: The image side of the built-ins (their IDX files are read as they are, no transform).
BUILTIN_SIZE = 28


def default_name(values: object) -> object:
    """Raw config values with `dataset` named after `data` when only `data` is given."""
    if isinstance(values, dict) and values.get("data") and values.get("dataset") is None:
        return {**values, "dataset": name_from_uri(str(values["data"]))}
    return values


def unknown_dataset(dataset: str) -> str:
    """The refusal of a run naming a data set that is neither built in nor given."""
    known = ", ".join(DATASETS)
    return f"dataset {dataset!r} is not built in ({known}): give your images with data: (--data)"


def selection_problem(cfg: Any) -> str | None:
    """Why a run config's choice of data is inconsistent, in one line, or None (`cfg`: a
    `tdpdm.config.RunConfig`; this floor does not import it)."""
    dataset, data = cfg.dataset, cfg.data
    if problem := unit_problem(cfg):
        return problem
    if not NAME_RE.match(dataset):
        return f"dataset {dataset!r}: a name of 1-64 characters a-z, 0-9, '.', '_' or '-'"
    if cfg.data_test is not None and dataset in DATASETS:
        return f"data_test is a test split of your own data: the built-in {dataset} has its own"
    if dataset not in DATASETS and cfg.evaluation.enabled and cfg.data_test is None:
        return (
            "evaluation on your own data needs a real test split of it, disjoint from the "
            "training records: data_test: (--data-test), a folder, .parquet or .npz"
        )
    if data is None:
        if dataset not in DATASETS:
            return None  # records passed in by the Python API (else refused when the run starts)
        if (
            cfg.image_size != BUILTIN_SIZE
            or cfg.classes is not None
            or cfg.channels
            not in (
                None,
                1,
            )
        ):
            return (
                "image_size, classes and channels describe your own data (data:); the built-in "
                f"{dataset} is grey {BUILTIN_SIZE}x{BUILTIN_SIZE} with its own classes"
            )
        return None
    if dataset in DATASETS:
        return (
            f"data: {storage.redact(data)!r} is your own data set: name it (dataset:) with a "
            f"name of its own, not the built-in {dataset!r}, whose budget it would spend"
        )
    return None


def unit_problem(cfg: Any) -> str | None:
    """Why the privacy-unit settings cannot be honoured, in one line, or None."""
    unit = getattr(cfg, "privacy_unit", None)
    if unit is None:
        if getattr(cfg, "records_per_unit", 1) != 1:
            return "records_per_unit bounds records per privacy unit: set privacy_unit too"
        return None
    if unit != unit.strip() or "\n" in unit:
        return f"privacy_unit {unit[:64]!r}: a column or array name on one line"
    if cfg.mode == "released":
        return (
            "privacy_unit: released mode releases each record once under replace-one adjacency, "
            "a per-record guarantee; use mode private for a guarantee per privacy unit"
        )
    if cfg.tune.trials:
        return "privacy_unit: not with tune.trials (the search is charged per trial, per record)"
    if cfg.data is None and cfg.dataset in DATASETS:
        return f"privacy_unit: the built-in {cfg.dataset} has no privacy units (one per record)"
    return None
