"""Fixtures for the offline Kubernetes checks (helpers live in k8s_support.py)."""

from __future__ import annotations

import copy
import subprocess

import pytest
from k8s_support import KUSTOMIZE_DIR, VALUE_SETS, Doc, kubectl_path, load_docs, render


@pytest.fixture(params=VALUE_SETS)
def value_set(request: pytest.FixtureRequest) -> str:
    """Name of one CI value set in helm/tdpdm/ci/ (the test runs once per set)."""
    return str(request.param)


@pytest.fixture
def rendered(value_set: str) -> list[Doc]:
    """The chart's objects rendered with `value_set` (a copy: tests may mutate it)."""
    return copy.deepcopy(load_docs(render(value_set)))


@pytest.fixture(scope="session")
def kustomized() -> list[Doc]:
    """The plain manifests in k8s/, built by kubectl's embedded kustomize."""
    proc = subprocess.run(
        [kubectl_path(), "kustomize", str(KUSTOMIZE_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return load_docs(proc.stdout)


@pytest.fixture(scope="session")
def render_all() -> dict[str, list[Doc]]:
    """Every CI value set's objects, by set name."""
    return {name: load_docs(render(name)) for name in VALUE_SETS}
