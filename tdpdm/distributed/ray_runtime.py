"""Start or join Ray for one job, and leave it as it was found.

The embedded default is a local, in-process Ray (no dashboard, nothing listening beyond what
Ray itself needs): `tdpdm run` on a laptop needs no cluster. `address` joins an existing one
(`auto`, `ray://head:10001`, `head:6379`). Ray is imported here, lazily, so the core runs
without it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

MISSING_RAY = (
    "Ray is not installed: install the `ray` extra (pip install 'tdpdm[ray]') or set "
    "distributed.backend: local"
)


class RayUnavailableError(RuntimeError):
    """Ray was asked for but cannot be imported."""


def import_ray() -> ModuleType:
    """`ray`, or a one-line error telling the user what to do."""
    try:
        import ray
        import ray.train.torch
    except ImportError:
        raise RayUnavailableError(MISSING_RAY) from None
    return ray


@contextlib.contextmanager
def ray_session(
    address: str | None = None, *, num_cpus: int | None = None, **init_kwargs: Any
) -> Iterator[ModuleType]:
    """Ray for the duration of the block: reuse a running one, else start (and later stop) it.

    `address` None means the cluster of a Ray job (`RAY_ADDRESS`) if there is one, else a
    private local Ray (`address="local"`: a bare `ray.init()` would attach to whatever `ray
    start` cluster this machine ran last). A local start gets no dashboard; `RAY_AUTH_MODE` is
    left to the user (Ray 2.60 turns token auth on for clusters it starts)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": True}
    if address == "local":
        kwargs |= {
            "include_dashboard": False,
            "num_cpus": num_cpus or os.cpu_count() or 1,
            # Ray's own workers log at ERROR: without a dashboard Ray Train's placement-group
            # watchdog warns every few seconds that the state API is unavailable.
            "logging_config": ray.LoggingConfig(log_level="ERROR"),
        }
    ray.init(**(kwargs | init_kwargs))
    try:
        yield ray
    finally:
        ray.shutdown()
