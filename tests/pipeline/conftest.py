"""One end-to-end run per mode, shared by every pipeline test (they only read its outputs).

A run writes two parts (`tdpdm.stages.artifacts`): `release/` (exactly what the guarantee covers)
and `custodian/` (metrics read from real data, private latents; never published)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import (
    one_torch_thread,
    shared_datasets_root,
    small_evaluation_splits,
    tiny_overrides,
)

from tdpdm.config import RunConfig, load_config
from tdpdm.pipeline import RunResult, run_pipeline


@dataclass
class FinishedRun:
    cfg: RunConfig
    result: RunResult
    root: Path

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def ledger(self) -> Path:
        return Path(self.cfg.ledger)

    @property
    def release(self) -> Path:
        return self.out / "release"

    @property
    def custodian(self) -> Path:
        return self.out / "custodian"

    def report(self) -> dict[str, Any]:
        """The release report as written to disk (what gets published), not the in-memory dict."""
        return json.loads((self.release / "report.json").read_text())

    def custodian_report(self) -> dict[str, Any]:
        """The custodian's report on disk: the release report plus custodian-only values."""
        return json.loads((self.custodian / "report.json").read_text())


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    root = shared_datasets_root()
    if not (root / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real data sets not found at {root}")
    return root


def _run(root: Path, data_dir: Path, mode: str) -> FinishedRun:
    cfg = load_config(None, tiny_overrides(root, data_dir, mode))
    with small_evaluation_splits(), one_torch_thread():
        result = run_pipeline(cfg, log=lambda m: None)
    return FinishedRun(cfg, result, root)


@pytest.fixture(scope="session")
def private_run(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> FinishedRun:
    return _run(tmp_path_factory.mktemp("private-run"), shared_datasets, "private")


@pytest.fixture(scope="session")
def released_run(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> FinishedRun:
    return _run(tmp_path_factory.mktemp("released-run"), shared_datasets, "released")


@pytest.fixture(scope="session", params=["private", "released"])
def finished_run(request: pytest.FixtureRequest) -> FinishedRun:
    return request.getfixturevalue(f"{request.param}_run")
