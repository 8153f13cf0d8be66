"""Fixtures for the CLI tests: real data, a private working directory, capped evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_support import shared_datasets_root


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    root = shared_datasets_root()
    if not (root / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real data sets not found at {root}")
    return root


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Relative defaults (runs/ledger.json, .tdpdm-cache) land in tmp, never in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cap the real splits the evaluation reads (the evaluator would otherwise train on 60k
    images for minutes); the private training read is not affected."""
    import tdpdm.pipeline as pipeline

    real = pipeline.load_split

    def capped(dataset: str, data_dir: str, split: str):
        images, labels = real(dataset, data_dir, split)
        n = 3000 if split == "train" else 2000
        return images[:n], labels[:n]

    monkeypatch.setattr(pipeline, "load_split", capped)
