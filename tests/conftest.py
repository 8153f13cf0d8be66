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


# Fixtures cheap enough to set up once per xdist worker; every other session fixture ties the
# tests that use it to one worker (see `pytest_collection_modifyitems`).
_CHEAP_SESSION_FIXTURES = frozenset(
    {"shared_datasets", "tmp_path_factory", "worker_id", "data_root", "mnist_small"}
)
# Tests that start, join or need the absence of a Ray run one at a time within their Ray group;
# the two groups (Ray Train, the rest) may run at once on two workers, each with its own Ray
# (`ray_session` starts a private local one; clusters have their own temp dirs and ports).
_RAY_DIRECTORIES = ("tests/distributed/", "tests/lipschitz/")
_RAY_TRAIN_FILES = (
    "tests/distributed/test_distributed_train",
    "tests/distributed/test_distributed_fault",
    "tests/distributed/test_distributed_backend",
)
_RAY_FIXTURES = frozenset({"local_ray", "no_ray_running"})
# Session fixtures that call others through `request.getfixturevalue` (invisible to pytest's
# closure): they share a worker with the fixtures they call.
_DYNAMIC_SESSION_CALLS = {"finished_run": ("private_run", "released_run")}


def _ray_group(item: pytest.Item) -> str | None:
    path = item.nodeid.split("::", 1)[0]
    if not (path.startswith(_RAY_DIRECTORIES) or _RAY_FIXTURES & set(item.fixturenames)):
        return None
    return "ray-train" if path.startswith(_RAY_TRAIN_FILES) else "ray-other"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup` (scripts/test.sh), mark each test with the group
    that must share its worker: tests of one module (module fixtures), tests sharing an
    expensive session fixture (one run per session, not per worker), and each Ray group."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    for item in items:
        module = "module:" + item.nodeid.split("::", 1)[0]
        ray_group = _ray_group(item)
        if ray_group:
            union(module, ray_group)
        fixture_defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        for name, defs in fixture_defs.items():
            if defs and defs[-1].scope == "session" and name not in _CHEAP_SESSION_FIXTURES:
                union(module, f"session:{name}")
                for called in _DYNAMIC_SESSION_CALLS.get(name, ()):
                    union(module, f"session:{called}")
    named = {find(g): g for g in ("ray-train", "ray-other") if g in parent}
    for item in items:
        group = find("module:" + item.nodeid.split("::", 1)[0])
        item.add_marker(pytest.mark.xdist_group(named.get(group, group)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """The last `local_ray` user of each xdist group stops the shared Ray (a group runs on one
    worker, in collection order)."""
    last: dict[str, str] = {}
    for item in session.items:
        if "local_ray" in getattr(item, "fixturenames", ()):
            marker = item.get_closest_marker("xdist_group")
            last[marker.args[0] if marker else ""] = item.nodeid
    _SHARED_RAY.last_users = set(last.values())


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if item.nodeid in _SHARED_RAY.last_users:
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
