"""The end-to-end run per mode (`private_run`, `released_run`: tests/conftest.py, shared with
tests/soundness) as one parametrized fixture: the pipeline tests only read its outputs.

A run writes two parts (`tdpdm.stages.artifacts`): `release/` (exactly what the guarantee covers)
and `custodian/` (metrics read from real data, private latents; never published)."""

from __future__ import annotations

import pytest
from tdpdm_test_support import FinishedRun


@pytest.fixture(scope="session", params=["private", "released"])
def finished_run(request: pytest.FixtureRequest) -> FinishedRun:
    return request.getfixturevalue(f"{request.param}_run")
