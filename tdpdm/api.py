"""The Python API: `tdpdm.Synthesizer`, in the field's conventions (SmartNoise Synth's
create / fit / sample, synthcity's fit / generate).

    synth = tdpdm.Synthesizer(epsilon=10, delta=1e-5, ledger="runs/ledger.json", out="runs/a")
    synth.fit("mnist", data_dir="../shared/datasets")   # the whole charged pipeline
    images, labels = synth.sample(1000)                 # post-processing: free
    synth.to_parquet("synthetic.parquet", n=1000)       # Hugging Face `datasets` layout
    synth.report["privacy"]["statement"]                # the guarantee in words
    later = tdpdm.Synthesizer.load("runs/a")            # a finished run: sample more

`fit` builds a `RunConfig` and runs `tdpdm.pipeline.run_pipeline`: the ledger is charged
exactly as by `tdpdm run` (which calls through here). Everything after `fit` reads only the
run's `release/` part (`tdpdm.stages.resample`), like `tdpdm sample`: no ledger entry, no
private record, no custodian file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tdpdm.choices import DATASETS
from tdpdm.config import RunConfig, load_config
from tdpdm.data import storage
from tdpdm.data.arrays import array_source
from tdpdm.data.sources import ArraySource, name_from_uri
from tdpdm.pipeline import RunResult, run_pipeline
from tdpdm.stages.artifacts import SYNTHETIC
from tdpdm.stages.context import training_set
from tdpdm.stages.resample import PublishedRun, fresh_seed

__all__ = ["Synthesizer"]

Log = Callable[[str], None]

_HANDED_IN = "(records passed in)"


class Synthesizer:
    """A differentially private synthesizer of labelled images.

    `epsilon`, `delta`: the run's target guarantee (with no budget yet for the data set in the
    ledger, they become its budget). `ledger`: the privacy ledger file or URI. `out`: where the
    run writes its `release/` and `custodian/` parts. `mode`: `private` or `released`. `seed`:
    public (initial weights, the synthetic sampler), never the DP noise. `config`: a YAML config
    file. `settings`: dotted config keys (`{"stage2.epochs": 3}`); any other keyword is a config
    key too, a section as a mapping (`stage2={"epochs": 3}`) or with `__` for the dot
    (`stage2__epochs=3`). Unknown keys fail here, before anything runs."""

    def __init__(
        self,
        epsilon: float | None = None,
        delta: float | None = None,
        *,
        ledger: str | Path | None = None,
        out: str | Path | None = None,
        mode: str | None = None,
        seed: int | None = None,
        device: str | None = None,
        config: str | Path | None = None,
        settings: Mapping[str, Any] | None = None,
        log: Log | None = print,
        **overrides: Any,
    ) -> None:
        given = {
            "epsilon": epsilon,
            "delta": delta,
            "ledger": _text(ledger),
            "out": _text(out),
            "mode": mode,
            "seed": seed,
            "device": device,
        }
        self._overrides = {
            **_dotted(overrides),
            **dict(settings or {}),
            **{k: v for k, v in given.items() if v is not None},
        }
        self._log: Log = log or (lambda message: None)
        self.cfg: RunConfig = load_config(config, self._overrides)
        self.result: RunResult | None = None
        """The last `fit`'s result (its `report` is the custodian's: never publish it)."""
        self._published: PublishedRun | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, log: Log | None = print) -> Synthesizer:
        """A synthesizer for a validated config (the CLI's `tdpdm run`)."""
        synth = cls(log=log)
        synth.cfg = cfg
        return synth

    @classmethod
    def load(cls, run: str | Path, *, device: str = "cpu", log: Log | None = print) -> Synthesizer:
        """A finished run (its `--out` folder, or a published copy of `release/`), to draw
        more records from on `device`. Reads the release part only."""
        published = PublishedRun.open(_text(run))
        synth = cls.from_config(published.cfg.replace(device=device), log)
        synth._published = published
        return synth

    # -- fitting (charged) ------------------------------------------------------------------

    def fit(
        self,
        data: Any = None,
        *,
        data_dir: str | Path | None = None,
        name: str | None = None,
        class_names: Sequence[str] | None = None,
        units: Any = None,
        records_per_unit: int | None = None,
    ) -> Synthesizer:
        """Run the whole pipeline on `data` (charged on the ledger, refused before reading a
        record if the plan does not fit the budget). `data`:

        - a built-in data set name (`"mnist"`, `"fashion-mnist"`) read from `data_dir`;
        - a path or URI (`str` or `pathlib.Path`) of your images: class folders, `.parquet`
          (Hugging Face layout), a `save_to_disk` folder or `.npz` (the `data` config key);
          `name` names its ledger budget (default: from the path);
        - images, or `(images, labels)`, as NumPy arrays or torch tensors: grey (N, H, W) /
          (N, H, W, 1) or RGB (N, H, W, 3) / (N, C, H, W), uint8 or floats in [0, 1]. `name`
          is required (the ledger's budget name: arrays have no path), and labels need
          `class_names` (the public label set); images alone are unlabelled;
        - None: the config's data set.

        `class_names` declares the classes of a path too (the `classes` config key). `units`
        (arrays only: one privacy-unit id per image, e.g. a person) makes the guarantee per
        unit, each unit bounded to `records_per_unit` images (default 1: the config key); for a
        path, set the `privacy_unit` config key (a Parquet column, an `.npz` array). Malformed
        input fails with one line before anything is charged or written."""
        changes, source = self._data_changes(data, name, class_names, units)
        if data_dir is not None:
            changes["data_dir"] = _text(data_dir)
        if records_per_unit is not None:
            changes["records_per_unit"] = records_per_unit
        if changes:  # top-level keys: a checked copy of the config, the rest kept
            self.cfg = self.cfg.replace(**changes)
        records = None if source is None else training_set(self.cfg, _HANDED_IN, source)
        self._published = None
        self.result = run_pipeline(self.cfg, log=self._log, records=records)
        return self

    def _data_changes(
        self, data: Any, name: str | None, class_names: Sequence[str] | None, units: Any = None
    ) -> tuple[dict[str, Any], ArraySource | None]:
        """Config keys for what `fit` was given, and the source of arrays handed in."""
        classes = tuple(class_names) if class_names is not None else None
        if units is not None and not _array_like(data):
            raise TypeError("fit(units=...) goes with arrays; for a path set privacy_unit")
        if data is None:
            return {}, None
        if isinstance(data, str) and data in DATASETS:
            if name is not None or classes is not None:
                raise TypeError(f"fit({data!r}): a built-in has its own name and classes")
            return {"dataset": data, "data": None}, None
        if isinstance(data, (str, Path)):
            uri = _text(data)
            assert uri is not None
            if "://" not in uri and not storage.exists(uri):
                raise TypeError(
                    f"fit(data): {storage.redact(uri)[:80]!r} is neither a built-in data set "
                    f"({', '.join(DATASETS)}) nor an existing path or URI of your images"
                )
            changes: dict[str, Any] = {"data": uri, "dataset": name or name_from_uri(uri)}
            if classes is not None:
                changes["classes"] = classes
            return changes, None
        if _array_like(data):
            classes = classes or self.cfg.classes
            source = array_source(data, name=name, class_names=classes, units=units)
            unit = {"privacy_unit": "units"} if units is not None else {}
            return {"dataset": source.name, "data": None, **unit}, source
        kind = type(data).__name__
        raise TypeError(
            f"fit(data): a {kind} is not supported; give a data set name ({', '.join(DATASETS)}),"
            " a path or URI, or images (NumPy array or torch tensor) with optional labels"
        )

    # -- after fitting (post-processing: free) ---------------------------------------------

    @property
    def run(self) -> PublishedRun:
        """The fitted run's release part, opened on first use."""
        if self._published is None:
            if self.result is None:
                raise RuntimeError(
                    "this Synthesizer is not fitted: call fit(...) or load(run) first"
                )
            self._published = PublishedRun.open(self.result.out)
        return self._published

    @property
    def report(self) -> dict[str, Any]:
        """The release report (publishable): the guarantee under `privacy`, the mechanisms
        that ran, the config; no value read from real data."""
        return self.run.report

    @property
    def guarantee(self) -> str:
        """The guarantee in words."""
        return str(self.run.report["privacy"]["statement"])

    @property
    def epsilon(self) -> float:
        """The run's epsilon (the accountant's upper bound)."""
        return float(self.run.report["privacy"]["epsilon"])

    def sample(
        self, n: int, seed: int | None = None, *, device: str | None = None, table: bool = False
    ) -> tuple[np.ndarray, np.ndarray] | pa.Table:
        """`n` synthetic records: (images uint8 (n, H, W), labels int64 (n,)), balanced over
        the classes; with `table`, a pyarrow Table in the Hugging Face layout of `to_parquet`
        (`datasets.Dataset(table)` reads its features). Post-processing of the release: no
        privacy cost. `seed` (public) makes the draw repeatable; None draws a fresh one."""
        seed = fresh_seed() if seed is None else seed
        images, labels = self.run.sample(n, seed=seed, device=device or self.cfg.device)
        return self.run.table(images, labels, seed=seed) if table else (images, labels)

    def to_parquet(self, path: str | Path, n: int | None = None, seed: int | None = None) -> str:
        """Write a synthetic data set in the Hugging Face `datasets` Parquet layout (an
        `Image` column and a `ClassLabel` with the class names) carrying the run's guarantee:
        the run's own synthetic file when `n` is None, else `n` new records."""
        uri = _text(path)
        if n is None:
            raw = storage.read_bytes(storage.join(self.run.release, SYNTHETIC))
            storage.write_bytes_atomic(uri, raw)
            return uri
        seed = fresh_seed() if seed is None else seed
        images, labels = self.run.sample(n, seed=seed, device=self.cfg.device)
        self.run.write(uri, images, labels, seed=seed)
        return uri

    def save(self, path: str | Path) -> str:
        """Copy the run's release part (and only it: what the guarantee covers) to `path`;
        `Synthesizer.load(path)` reads it back."""
        dest = _text(path)
        _copy_tree(self.run.release, dest)
        return dest

    def __repr__(self) -> str:
        fitted = self._published or self.result
        state = f"fitted: {self.run.release}" if fitted else "not fitted"
        c = self.cfg
        return f"Synthesizer({c.dataset}, {c.mode}, epsilon {c.epsilon:g}; {state})"


def _array_like(data: Any) -> bool:
    """Images, or an (images, labels) pair, as arrays or tensors."""
    first = data[0] if isinstance(data, tuple | list) and data else data
    return isinstance(first, np.ndarray) or hasattr(first, "detach")


def _dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`stage2={"epochs": 3}` and `stage2__epochs=3` as `{"stage2.epochs": 3}`."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if isinstance(value, Mapping):
            for sub, inner in _dotted(value).items():
                out[f"{key}.{sub}"] = inner
        else:
            out[key] = value
    return out


def _text(value: str | Path | None) -> str | None:
    """A path or URI as text (a URI as given: Path() would fold s3://b into s3:/b)."""
    if value is None or isinstance(value, str):
        return value
    return Path(value).as_posix()


def _copy_tree(src: str, dest: str) -> None:
    for name in storage.listdir(src):
        here, there = storage.join(src, name), storage.join(dest, name)
        if storage.isdir(here):
            _copy_tree(here, there)
        else:
            storage.write_bytes_atomic(there, storage.read_bytes(here))
