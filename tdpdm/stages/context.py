"""What every entry point of a run holds before and while its mechanisms run: the validated
config, the ledger and its budget, telemetry, the log, the output layout. Nothing here reads a
private record; `charged` settles a charge exactly once whatever happens.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tdpdm.config import RunConfig
from tdpdm.data import storage
from tdpdm.data.catalog import DATASETS, DatasetSpec, get_spec
from tdpdm.data.download import ensure_dataset
from tdpdm.data.errors import DataError
from tdpdm.data.inputs import data_source
from tdpdm.data.private import PrivateTrainingSet
from tdpdm.data.selection import unknown_dataset
from tdpdm.data.sources import DataSource, IDXSource, SourceInfo
from tdpdm.privacy.ledger import Budget, Ledger
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.privacy.session import PrivacySession
from tdpdm.privacy.units import PrivacyUnit, same_unit
from tdpdm.stages.artifacts import RunLayout
from tdpdm.stages.plan import default_adjacency
from tdpdm.telemetry import Telemetry, get_telemetry

Log = Callable[[str], None]
StageRecord = dict[str, Any]
"""One entry of the report's `stages` list: name, wall_time_s, details."""


@dataclass
class RunContext:
    """One job's surroundings. The config is validated and never changed afterwards."""

    cfg: RunConfig
    spec: DatasetSpec | SourceInfo
    """Public: the class names and count the models use (a built-in's catalog entry, or your
    data's description)."""
    job_id: str
    data_dir: str
    ledger: Ledger
    budget: Budget
    telemetry: Telemetry
    log: Log
    started: float
    layout: RunLayout
    budget_is_new: bool = False
    stages: list[StageRecord] = field(default_factory=list)
    tuning: dict[str, Any] | None = None
    """The stage-2 search's report section, when one ran."""
    tuning_events: list = field(default_factory=list)
    """What the search's trials spent (their own ledger charges): part of the run's epsilon."""
    work_dirs: list[str] = field(default_factory=list)
    """Custodian scratch (checkpoints with secret generator state) to delete on success."""
    losses: dict[str, float] = field(default_factory=dict)
    """Last training loss per stage: kept only when the custodian opted in."""
    source: DataSource | None = None
    """The user's own data (`cfg.data`), described (checked) once; None for a built-in."""

    @classmethod
    def start(
        cls,
        cfg: RunConfig,
        log: Log,
        telemetry: Telemetry | None,
        source: DataSource | None = None,
    ) -> RunContext:
        """`source`: records handed in (the Python API's arrays) instead of the configured."""
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)  # public: initial weights and the synthetic sampler only
        # An output URI that cannot be written (odd scheme, NUL byte) must fail here, not after
        # the mechanisms ran and spent budget on results that could not be saved.
        storage.resolve(cfg.out)
        source = _checked_source(cfg, source)
        spec = get_spec(cfg.dataset) if source is None else source.describe()
        cfg = with_data_shape(cfg, spec)
        if cfg.data_test is not None or (source is not None and cfg.evaluation.enabled):
            test_split(cfg, spec).describe()  # its structure checked before any charge
        if source is None:
            data_dir = ensure_dataset(
                cfg.dataset, cfg.data_dir, download_if_missing=cfg.download, progress=cfg.progress
            )
        else:
            data_dir = cfg.data or "(records passed in)"
        ledger = Ledger(cfg.ledger)
        budget, budget_is_new = _budget_for(ledger, cfg, log)
        return cls(
            cfg=cfg,
            spec=spec,
            source=source,
            job_id=cfg.job_id or f"{cfg.dataset}-{cfg.mode}-{uuid.uuid4().hex[:8]}",
            data_dir=data_dir,
            ledger=ledger,
            budget=budget,
            budget_is_new=budget_is_new,
            telemetry=telemetry or get_telemetry(),
            log=log,
            started=started,
            layout=RunLayout(cfg.out),
        )

    def begin(self, events: list) -> PrivacySession:
        """Reserve `events` on the ledger: refused here, ledger untouched, before any read."""
        if self.budget_is_new:
            b = self.budget
            self.budget = self.ledger.set_budget(
                self.cfg.dataset, b.epsilon, b.delta, b.adjacency.value, b.unit
            )
            self.budget_is_new = False
            self.log(
                f"no budget for {self.cfg.dataset} in {self.ledger.store.location}: set it "
                f"to {self.budget.describe()}"
            )
        session = PrivacySession.begin(self.ledger, self.cfg.dataset, self.job_id, events)
        self.telemetry.job(self.job_id, "running")
        self.report_budget()
        return session

    def report_budget(self) -> None:
        spent = self.ledger.spent(self.cfg.dataset).epsilon
        self.telemetry.privacy(self.cfg.dataset, spent, self.budget.epsilon, self.budget.delta)

    @contextlib.contextmanager
    def timed(self, name: str, **details: Any) -> Iterator[dict[str, Any]]:
        """Record a stage's wall time in `stages`; the block may add details to the dict."""
        t = time.perf_counter()
        yield details
        self.stages.append(
            {"name": name, "wall_time_s": time.perf_counter() - t, "details": details}
        )

    def progress(self, stage: str, total: int, batch: int) -> Callable[[int, float], None]:
        """Telemetry every 10 steps: steps and throughput; the loss only if the custodian opted
        in (a batch's mean loss is an unnoised statistic of private records)."""
        last = [time.perf_counter(), 0]
        keep_loss = self.cfg.custodian_losses

        def on_step(step: int, loss: float) -> None:
            if keep_loss and np.isfinite(loss):
                self.losses[stage] = float(loss)
            if step % 10 and step != total:
                return
            now = time.perf_counter()
            rate = (step - last[1]) * batch / max(now - last[0], 1e-9)
            shown = float(loss) if keep_loss and np.isfinite(loss) else None
            self.telemetry.step(stage, step - last[1], shown, rate)
            self.telemetry.stage(self.job_id, stage, step / total)
            last[:] = [now, step]

        return on_step

    def remove_work(self) -> None:
        """Delete checkpoints that hold secret generator state once the run has succeeded."""
        for uri in [self.layout.work, *self.work_dirs]:
            storage.remove_tree(uri)


@contextlib.contextmanager
def charged(ctx: RunContext, session: PrivacySession, was_read: Callable[[], bool]):
    """Settle the charge at what ran. A job that failed before reading anything is cancelled;
    one that failed after reading (even in validation) is charged its full plan: whether and how
    it failed can depend on the records."""
    try:
        yield
    except BaseException as err:
        if not was_read():
            session.cancel_unread(note=f"failed before reading any record: {err}")
        else:
            session.settle_at_full_plan(
                note=f"failed after reading records ({type(err).__name__}): charged its full plan"
            )
        ctx.telemetry.job(ctx.job_id, "failed")
        raise
    session.settle(note=f"completed {ctx.job_id}")
    ctx.report_budget()


def own_data(cfg: RunConfig) -> DataSource:
    """`cfg.data`'s source, described (structure checked: refused here, before any charge)."""
    assert cfg.data is not None
    source = data_source(
        cfg.data,
        name=cfg.dataset,
        image_size=cfg.image_size,
        classes=cfg.classes,
        channels=cfg.channels,
    )
    _check_model_shape(cfg, source.describe(), storage.redact(cfg.data))
    return source


def training_set(
    cfg: RunConfig, data_dir: str, source: DataSource | None = None
) -> PrivateTrainingSet:
    """The configured training set (`source`, else the built-in or `cfg.data`'s); a subset
    gets its own secret per-record draws."""
    key = MechanismKey.fresh("subset") if cfg.subset is not None else None
    source = source or (IDXSource(cfg.dataset, data_dir) if cfg.data is None else own_data(cfg))
    unit_key = MechanismKey.fresh("privacy-unit") if cfg.privacy_unit else None
    return PrivateTrainingSet(
        source,
        data_dir,
        cfg.subset,
        subset_key=key,
        unit=cfg.privacy_unit,
        per_unit=cfg.records_per_unit,
        unit_key=unit_key,
    )


def handed_in(records: PrivateTrainingSet | None) -> DataSource | None:
    """The user's own source of records handed to a run (None: none, or a built-in's)."""
    if records is None or isinstance(records.source, IDXSource):
        return None
    return records.source


def run_unit(cfg: RunConfig) -> PrivacyUnit | None:
    """The run's privacy unit (None: the guarantee is per record)."""
    return PrivacyUnit(cfg.privacy_unit, cfg.records_per_unit) if cfg.privacy_unit else None


def _checked_source(cfg: RunConfig, source: DataSource | None) -> DataSource | None:
    """The run's own data (handed in, or `cfg.data`), checked; None for a built-in."""
    if source is None:
        if cfg.data is not None:
            return own_data(cfg)
        if cfg.dataset not in DATASETS:
            raise DataError(unknown_dataset(cfg.dataset))
        return None
    if source.name != cfg.dataset:
        raise DataError(
            f"the records handed in are data set {source.name!r} but the run names "
            f"{cfg.dataset!r}: the ledger charges one name"
        )
    _check_model_shape(cfg, source.describe(), source.name)
    return source


def test_split(cfg: RunConfig, spec: DatasetSpec | SourceInfo) -> DataSource:
    """Your data's real test split (`cfg.data_test`), read like the training data: the same
    classes (by name), channels and size. Only the custodian's opt-in evaluation reads it."""
    if cfg.data_test is None:
        raise DataError("evaluation on your own data needs its real test split: --data-test")
    if not getattr(spec, "labelled", True):
        raise DataError(
            f"{cfg.dataset}: the data is unlabelled, so there is nothing to evaluate a classifier "
            "on (the evaluation trains and tests class-conditional CNNs)"
        )
    return data_source(
        cfg.data_test,
        name=cfg.dataset,
        image_size=spec.image_size,
        classes=tuple(spec.class_names),
        channels=spec.channels,
    )


def with_data_shape(cfg: RunConfig, spec: DatasetSpec | SourceInfo) -> RunConfig:
    """`cfg` with the data's public shape (`channels`, `image_size`) filled in, so that every
    model built from the run's config (and from its report's, by `tdpdm sample --from`) takes
    the images the data set holds. Public: read from the data's description, not its pixels."""
    if (cfg.channels, cfg.image_size) == (spec.channels, spec.image_size):
        return cfg
    return cfg.replace(channels=spec.channels, image_size=spec.image_size)


def _check_model_shape(cfg: RunConfig, info: SourceInfo, where: str) -> None:
    """Refuse, before any charge, a shape the configured stage-1 model cannot take."""
    conv = cfg.stage1.mechanism == "dpsgd-autoencoder"
    if conv and info.image_size % 4:
        raise DataError(
            f"{where}: images of side {info.image_size}: the autoencoder halves the side twice, "
            "so it must be a multiple of 4 (set --image-size, e.g. 28 or 32)"
        )


def _budget_for(ledger: Ledger, cfg: RunConfig, log: Log) -> tuple[Budget, bool]:
    """The data set's budget, or (not yet written) the one this run would set: (budget, new).

    A new budget is only written when the run's plan is reserved, so a run refused earlier (bad
    delta, impossible epsilon) leaves the ledger as it found it."""
    budget, unit = ledger.budget(cfg.dataset), run_unit(cfg)
    if budget is None:
        adjacency = default_adjacency(cfg.mode)
        return Budget(float(cfg.epsilon), float(cfg.delta), adjacency, unit), True
    if budget.unit != unit:
        if ledger.charges(cfg.dataset):
            same_unit(budget.unit, unit, cfg.dataset)  # refused: charges would not compose
        stated = unit.describe() if unit else "per record"
        log(f"note: the {cfg.dataset} budget (nothing charged yet) is now stated {stated}")
        budget = Budget(budget.epsilon, budget.delta, budget.adjacency, unit)
        return budget, True  # written with the charge, as a new budget is
    if budget.delta != cfg.delta:
        log(
            f"note: the {cfg.dataset} budget is stated at delta {budget.delta:g}; the run is "
            f"accounted at that delta, not {cfg.delta:g}"
        )
    return budget, False
