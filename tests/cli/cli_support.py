"""Helpers for the CLI tests: one-line error checks (data location, tiny settings and `--set`
flags: tests/tdpdm_test_support.py)."""

from __future__ import annotations


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
