"""Session fixtures for the leak tests: the training subset and one captured run per mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from leak_support import CapturedRun, run_cli, subset_positions


@pytest.fixture(scope="session")
def training_subset(shared_datasets: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, positions) of the records the runs train on.

    The positions repeat `PrivateTrainingSet`'s documented rule (one independent draw per record
    from the subset mechanism's key, which the leak runs fix: leak_support.py); the test reads
    the files directly, as the custodian may.
    """
    from tdpdm.data.loader import load_split

    images, labels = load_split("mnist", str(shared_datasets / "mnist"), "train")
    positions = subset_positions(len(images))
    return images[positions], labels[positions], positions


@pytest.fixture(scope="session", params=["private", "released"])
def captured_run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    shared_datasets: Path,
    training_subset,
) -> CapturedRun:
    root = tmp_path_factory.mktemp(f"leak-{request.param}")
    run = run_cli(root, shared_datasets, request.param)
    assert run.returncode == 0, run.stderr[-3000:]
    return run
