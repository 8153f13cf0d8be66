"""Fixtures shared by the tests in tests/distributed (add yours; keep the others')."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Shared 2-core CI machines: Ray Train's default 60 s for a worker group to start is too short.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")


@pytest.fixture(scope="module")
def local_ray_for_train():
    """A private local Ray (2 CPUs, no dashboard) for one test module, stopped afterwards."""
    from tdpdm.distributed.ray_runtime import ray_session

    with ray_session("local", num_cpus=2) as ray:
        yield ray
