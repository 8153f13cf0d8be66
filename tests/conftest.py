"""Fixtures shared by every test directory (helpers: tdpdm_test_support.py).

`shared_datasets` (session): the real data sets, or a clean skip where they are missing.
`one_torch_thread`: torch on one thread for the test (2 busy cores).
`private_run`, `released_run` (session): one tiny end-to-end run per mode, shared by every test
that only reads its outputs (tests/pipeline, tests/soundness): a run costs a minute or more.
`local_ray`: one private local Ray shared by every test that runs on Ray in this process
(tests/distributed, tests/lipschitz), started by the first such test and stopped after the last;
`no_ray_running`: none, for a test that shows a run starting and stopping its own.

Mechanism randomness (DP noise, sampling masks, release noise, score noise) comes from fresh OS
entropy in the product (`tdpdm.privacy.randomness`). Tests that need it repeatable replace the
entropy source *in this process* through the fixtures below, never through a product flag or a
config key: no such flag exists.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mechanism_keys import derived_key, seed_derived_key
from tdpdm_test_support import (
    FinishedRun,
    SharedRay,
    require_shared_datasets,
    run_tiny_pipeline,
    torch_threads,
)

from tdpdm.privacy import randomness


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real MNIST / Fashion-MNIST copies (../shared/datasets or $TDPDM_SHARED_DATASETS);
    the test is skipped where they are missing."""
    return require_shared_datasets()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


_SHARED_RAY = SharedRay()


@pytest.fixture
def local_ray() -> object:
    """The shared local Ray (`ray`, initialised): the product's `ray_session` joins a running
    Ray, so every Ray run in the test uses it instead of starting its own (10-20 s each here)."""
    return _SHARED_RAY.start()


@pytest.fixture
def no_ray_running() -> None:
    """No Ray initialised in this process when the test starts (the shared one is stopped; the
    next `local_ray` test starts it again): a run must start its own, or find none."""
    _SHARED_RAY.stop()
    if "ray" in sys.modules:
        assert not sys.modules["ray"].is_initialized(), "a Ray left running by another test"


def pytest_collection_finish(session: pytest.Session) -> None:
    users = [item for item in session.items if "local_ray" in getattr(item, "fixturenames", ())]
    _SHARED_RAY.last_user = users[-1].nodeid if users else None


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if item.nodeid == _SHARED_RAY.last_user:
        _SHARED_RAY.stop()  # Ray's daemons would otherwise idle on the 2 cores until the end


def pytest_sessionfinish(session: pytest.Session) -> None:
    _SHARED_RAY.stop()


@pytest.fixture(scope="session")
def private_run(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> FinishedRun:
    return run_tiny_pipeline(tmp_path_factory.mktemp("private-run"), shared_datasets, "private")


@pytest.fixture(scope="session")
def released_run(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> FinishedRun:
    return run_tiny_pipeline(tmp_path_factory.mktemp("released-run"), shared_datasets, "released")


@pytest.fixture
def fixed_mechanism_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeatable mechanism keys: the k-th key drawn for a purpose is the same in every run of
    the test, and keys of different purposes or draws differ (mechanisms stay independent)."""
    drawn: Counter[str] = Counter()

    def entropy(purpose: str) -> int:
        drawn[purpose] += 1
        return derived_key(f"fixed/{purpose}/{drawn[purpose]}")

    monkeypatch.setattr(randomness, "_entropy", entropy)


@pytest.fixture
def seed_derived_mechanism_keys(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Install keys derived from a published seed (call the returned function with the seed):
    what the product did before issue 11. Only adversary tests use it, to show that a replay
    attacker then wins."""

    def install(seed: int) -> None:
        monkeypatch.setattr(randomness, "_entropy", lambda purpose: seed_derived_key(seed, purpose))

    return install
