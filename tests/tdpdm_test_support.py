"""Helpers shared by every test folder (one module, uniquely named: folder `conftest` modules
clash when imported by name). Import it as `from tdpdm_test_support import ...`; tests/ is on the
import path because tests/conftest.py lives there.

- where the real data sets are (`shared_datasets_root`, `require_shared_datasets`; the
  session fixture `shared_datasets` in tests/conftest.py skips cleanly without them),
- the settings of a tiny run (`tiny_run_overrides`, `tiny_run_sets`), on the local backend
  unless a test asks for Ray (tests/distributed), and such a run in this process
  (`run_tiny_pipeline`; tests/conftest.py shares one per mode: `private_run`, `released_run`),
- what a finished run writes (`RUN_RELEASE_FILES`, `RUN_CUSTODIAN_FILES`, `files_under`,
  `assert_run_parts`) and its Ray Train checkpoints (`watch_checkpoint_deletions`,
  `assert_checkpoints_were_private_and_deleted`),
- one local Ray shared by the tests that run on Ray (`SharedRay`; tests/conftest.py's
  `local_ray` fixture),
- a free loopback port (`free_port`), one torch thread (`torch_threads`), capped evaluation
  splits (`small_evaluation_splits`),
- external tools: Debian's chromium (`CHROMIUM`, `CHROMIUM_ARGS`, `needs_chromium`) and helm
  (`require_tool`, `helm_path`, `helm_env`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_MARKER = Path("mnist") / "train-images-idx3-ubyte.gz"


# -- real data -------------------------------------------------------------------------------


def shared_datasets_root() -> Path:
    """The real data sets: $TDPDM_SHARED_DATASETS, else ../shared/datasets next to the repo."""
    env = os.environ.get("TDPDM_SHARED_DATASETS")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "datasets"


def require_shared_datasets(*, fail_under_ci: bool = False) -> Path:
    """`shared_datasets_root()` if real MNIST is there; otherwise skip the test (or fail it
    under CI when `fail_under_ci`: there a skip would hide a broken set-up)."""
    root = shared_datasets_root()
    if not (root / MNIST_MARKER).is_file():
        message = f"real data sets not found at {root} (set TDPDM_SHARED_DATASETS)"
        if fail_under_ci and os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


# -- tiny runs -------------------------------------------------------------------------------

TINY_SETTINGS: dict[str, Any] = {
    "stage1.epochs": 1,
    "stage2.epochs": 3,
    "stage2.batch_size": 256,
    "evaluation.synthetic_count": 300,
    "evaluation.classifier_epochs": 1,
    "evaluation.evaluator_epochs": 1,
}
"""A run that takes well under a minute on 2 CPU cores (the evaluation's sizes count only
where it is opted in: it reads real data without noise)."""


def tiny_run_overrides(
    root: Path,
    data_dir: Path | str,
    mode: str = "private",
    *,
    epsilon: float = 10.0,
    delta: float = 1e-5,
    subset: int | None = 1500,
    seed: int = 7,
    out: str = "out",
    evaluation: bool = False,
    backend: str = "local",
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`load_config` overrides of a tiny MNIST run with every path under `root`:
    `TINY_SETTINGS`, then `settings` (which win).

    The local backend: starting a local Ray costs 10-20 s per run here, so only tests about
    Ray (tests/distributed) pass `backend="ray"`."""
    return {
        "mode": mode,
        "dataset": "mnist",
        "data_dir": str(data_dir),
        "epsilon": epsilon,
        "delta": delta,
        "subset": subset,
        "seed": seed,
        "out": str(root / out),
        "ledger": str(root / "ledger.json"),
        "cache_dir": str(root / "cache"),
        "progress": False,
        "distributed.backend": backend,
        **TINY_SETTINGS,
        "evaluation.enabled": evaluation,
        **(settings or {}),
    }


def set_flags(*items: str) -> list[str]:
    """`--set` flags for the CLI, one per `KEY=VALUE` item."""
    return [part for item in items for part in ("--set", item)]


def tiny_run_sets(*, backend: str = "local") -> list[str]:
    """`TINY_SETTINGS` and the backend as CLI `--set` flags (evaluation left as configured)."""
    settings = {**TINY_SETTINGS, "distributed.backend": backend}
    return set_flags(*(f"{k}={v}" for k, v in settings.items()))


MNIST_TRAIN_RECORDS = 60000


def plausible_poisson_count(count: int, planned: int, total: int = MNIST_TRAIN_RECORDS) -> bool:
    """`--subset m` keeps each of `total` records independently with probability m/total: the
    realised count is Binomial(total, m/total). Six standard deviations: a false alarm about
    once in 10^9 runs, while a subset that ignores the rule (all records, none, twice m) fails."""
    p = planned / total
    return abs(count - planned) <= 6 * math.sqrt(total * p * (1 - p))


@dataclass
class FinishedRun:
    """A tiny `run_pipeline` run that succeeded: its config, result, root folder and every
    mechanism key it drew (`(purpose, key)`, kept in memory only)."""

    cfg: Any  # tdpdm.config.RunConfig
    result: Any  # tdpdm.pipeline.RunResult
    root: Path
    drawn: list[tuple[str, int]] = field(default_factory=list)

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


def run_tiny_pipeline(root: Path, data_dir: Path, mode: str) -> FinishedRun:
    """`run_pipeline` in this process on `tiny_run_overrides` with the evaluation opted in
    (its real splits capped), one torch thread, every mechanism key drawn recorded. The runs
    that tests/conftest.py shares (`private_run`, `released_run`)."""
    from tdpdm.config import load_config
    from tdpdm.pipeline import run_pipeline
    from tdpdm.privacy import randomness

    cfg = load_config(None, tiny_run_overrides(root, data_dir, mode, evaluation=True))
    drawn: list[tuple[str, int]] = []
    real = randomness._entropy

    def recording(purpose: str) -> int:
        key = real(purpose)
        drawn.append((purpose, key))
        return key

    with small_evaluation_splits(), torch_threads(1), pytest.MonkeyPatch.context() as mp:
        mp.setattr(randomness, "_entropy", recording)
        result = run_pipeline(cfg, log=lambda m: None)
    return FinishedRun(cfg, result, root, drawn)


# -- a run's outputs -------------------------------------------------------------------------

RUN_RELEASE_FILES = frozenset(
    {
        "synthetic/part-0.parquet",
        "samples.png",
        "report.json",
        "report.html",
        "models/autoencoder.pt",
        "models/diffusion.pt",
    }
)
"""The release part of every finished run (relative paths); `released` mode adds its DP latents
(`latents/latents.parquet`)."""
RUN_CUSTODIAN_FILES = frozenset({"report.json", "report.html"})
"""The custodian part of every finished run; `evaluation.json` where the evaluation ran, the
private latents (`latents/latents.parquet`) in `private` mode."""


def files_under(root: Path) -> set[str]:
    """Every file below `root`, as a POSIX path relative to it."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def assert_run_parts(
    out: Path, *, release: set[str] | frozenset[str], custodian: set[str] | frozenset[str]
) -> None:
    """`out` holds a release and a custodian part and nothing else: the release exactly the
    files `release`, the custodian exactly `custodian`, each of those readable by the owner
    only (0600: values read from private data without noise), no work area (checkpoints with
    secret generator state) left behind."""
    assert sorted(p.name for p in out.iterdir()) == ["custodian", "release"]
    assert files_under(out / "release") == set(release)
    assert files_under(out / "custodian") == set(custodian)
    for name in sorted(custodian):
        assert stat.S_IMODE((out / "custodian" / name).stat().st_mode) == 0o600, name
    assert not (out / "custodian" / "work").exists()


def watch_checkpoint_deletions(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """Every DP-SGD checkpoint under a tree the run deletes (`storage.remove_tree`), seen just
    before the deletion: state file -> the fields it holds. Filled in as the run goes."""
    import torch

    from tdpdm.data import storage
    from tdpdm.distributed.stage1_train import STATE_FILE

    seen: dict[str, set[str]] = {}
    real = storage.remove_tree

    def recording(uri: str) -> None:
        for path in Path(uri).rglob(f"checkpoint_*/{STATE_FILE}"):
            seen[str(path)] = set(torch.load(path, map_location="cpu", weights_only=True))
        real(uri)

    monkeypatch.setattr(storage, "remove_tree", recording)
    return seen


def assert_checkpoints_were_private_and_deleted(
    out: Path, checkpoints: dict[str, set[str]]
) -> None:
    """Ray Train checkpoints (`watch_checkpoint_deletions`) were written, to the custodian's
    work area only, held every rank's generator states (as secret as the mechanism key), and
    were deleted with it once the run succeeded (issue 11, finding 2: they used to stay in
    <out>/ray next to the published outputs)."""
    from tdpdm.distributed.stage1_train import STATE_FILE
    from tdpdm.stages.artifacts import RunLayout

    work = Path(RunLayout(str(out)).work)
    assert checkpoints, "no Ray Train checkpoint was written under the work area"
    for path, fields in checkpoints.items():
        assert Path(path).is_relative_to(work / "ray"), path
        assert {"sampler_rng", "noise_rng", "loss_rng"} <= fields
    assert not work.exists()
    assert not list(out.rglob("checkpoint_*")) and not list(out.rglob("*-stage1-*"))
    assert not list(out.rglob(STATE_FILE))


# -- process-local settings -------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """On a busy 2-core machine OpenMP spin-waits make 2 threads several times slower than 1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


EVAL_TRAIN_RECORDS = 3000
EVAL_TEST_RECORDS = 2000


@contextlib.contextmanager
def small_evaluation_splits() -> Iterator[None]:
    """Cap the real splits the *evaluation* reads (not the private training read).

    The evaluator CNN otherwise trains on all 60k real images, minutes on 2 cores; the metric
    code has its own tests. Only `tdpdm.stages.publish.load_split` (the evaluation's alone) is
    wrapped; the records the mechanisms read still come through `PrivateTrainingSet`.
    """
    import tdpdm.stages.publish as publish

    real = publish.load_split

    def capped(dataset: str, data_dir: str, split: str):
        images, labels = real(dataset, data_dir, split)
        n = EVAL_TRAIN_RECORDS if split == "train" else EVAL_TEST_RECORDS
        return images[:n], labels[:n]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(publish, "load_split", capped)
        yield


# -- Ray -------------------------------------------------------------------------------------


class SharedRay:
    """One private local Ray (2 CPUs, no dashboard) for every test that needs it, started with
    the product's own `ray_session("local")` the first time and stopped on `stop()`.

    Starting Ray costs 10-20 s on 2 busy cores; a run inside a test joins the running one
    (`ray_session` reuses an initialised Ray), exactly as a `ray job` driver does."""

    def __init__(self) -> None:
        self._session: contextlib.ExitStack | None = None
        self.last_users: set[str] = set()

    def start(self) -> Any:
        if self._session is None:
            from tdpdm.distributed.ray_runtime import ray_session

            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            stack = contextlib.ExitStack()
            self.ray = stack.enter_context(ray_session("local", num_cpus=2))
            self._session = stack
        assert self.ray.is_initialized(), "the shared Ray was shut down behind its back"
        return self.ray

    def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


# -- network ---------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bound, read and released). Also a dead endpoint:
    `f"http://127.0.0.1:{free_port()}"` refuses connections."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- external tools --------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Headless Debian chromium for playwright: no sandbox (root in CI), nothing from the network."""
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"needs Debian chromium at {CHROMIUM}"
)


def require_tool(path: str | os.PathLike[str] | None, name: str, hint: str) -> str:
    """Return the tool's path; skip when absent, but fail under CI (a skip would hide it)."""
    if path and Path(path).is_file() and os.access(path, os.X_OK):
        return str(path)
    message = f"{name} not found ({hint}); run scripts/setup_tools.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def helm_path() -> str:
    """The helm of scripts/setup_tools.sh: $TDPDM_HELM, else .tools/bin/helm in the repo."""
    candidate = os.environ.get("TDPDM_HELM") or str(REPO / ".tools" / "bin" / "helm")
    return require_tool(candidate, "helm", "TDPDM_HELM or .tools/bin/helm")


def helm_env(home: Path) -> dict[str, str]:
    """This environment with helm's cache, config and data under `home` (a throw-away place:
    no user config or repo cache leaks into what helm renders)."""
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


class EventTally:
    """A stand-in privacy session for unit tests of one mechanism: it keeps what is recorded."""

    def __init__(self) -> None:
        self.events: list = []

    def record(self, event) -> None:
        self.events.append(event)
