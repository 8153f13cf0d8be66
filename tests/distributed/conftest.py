"""Fixtures shared by the tests in tests/distributed (add yours; keep the others').

The local Ray these tests run on is `local_ray` (tests/conftest.py): one for the whole session."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Shared 2-core CI machines: Ray Train's default 60 s for a worker group to start is too short.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
