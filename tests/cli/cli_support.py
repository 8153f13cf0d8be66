"""Helpers for the CLI tests: data location, tiny settings as flags, one-line error checks."""

from __future__ import annotations

import os
from pathlib import Path

TINY_SETS = [
    "stage1.epochs=1",
    "stage2.epochs=3",
    "stage2.batch_size=256",
    "evaluation.synthetic_count=300",
    "evaluation.classifier_epochs=1",
    "evaluation.evaluator_epochs=1",
]


def shared_datasets_root() -> Path:
    env = os.environ.get("TDPDM_SHARED_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def set_flags(*items: str) -> list[str]:
    out: list[str] = []
    for item in items:
        out += ["--set", item]
    return out


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tdpdm: error:")]


def assert_one_line_error(stderr: str, *, only_line: bool = True) -> str:
    """The failure is one `tdpdm: error:` line, the last thing on stderr, with no traceback.

    `only_line`: nothing else was written (errors raised before the run logs anything)."""
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    assert "Traceback" not in stderr
    assert len(error_lines(stderr)) == 1, stderr
    assert lines[-1].startswith("tdpdm: error: "), stderr
    if only_line:
        assert len(lines) == 1, stderr
    return lines[-1]
