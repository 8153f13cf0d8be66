"""The lines a person reads at the end of a run (`tdpdm.report.summary.describe`): the guarantee
rounded up, the budget, and metrics only where the custodian's report holds them."""

from __future__ import annotations

from typing import Any

import pytest

from tdpdm.report.summary import describe
from tdpdm.report.text import epsilon_text


def _line(text: str, prefix: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith(prefix)]
    return line


@pytest.mark.parametrize(
    ("epsilon", "shown"),
    [(1.0, "1.000"), (1.0001, "1.001"), (2.99949, "3.000"), (0.0004, "0.001"), (9.98712, "9.988")],
)
def test_epsilon_text_rounds_up(epsilon: float, shown: str) -> None:
    assert epsilon_text(epsilon) == shown
    assert float(shown) >= epsilon  # a printed guarantee never looks stronger


def test_release_report_says_not_evaluated(good_report: dict[str, Any]) -> None:
    """The release report's metrics are all null: no invented figures, no 'n/a' row that reads
    as if evaluation had run."""
    good_report["metrics"] = dict.fromkeys(["accuracy", "inception_score", "classifier_fd", "fid"])
    good_report["privacy"]["adjacency_words"] = "adding or removing one record"
    text = describe(good_report)
    assert _line(text, "metrics") == "metrics: not evaluated (evaluation.enabled is off)"
    assert "accuracy" not in text and "n/a" not in text
    guarantee = _line(text, "guarantee:")
    assert "epsilon = 9.988 (upper bound)" in guarantee and "delta = 1e-05" in guarantee
    assert "adjacency = add_remove (adding or removing one record)" in guarantee
    assert _line(text, "budget mnist:") == "budget mnist: spent 9.988 of 20"


def test_custodian_report_shows_its_metrics(good_report: dict[str, Any]) -> None:
    line = _line(describe(good_report), "metrics")
    assert line.startswith("metrics (custodian-only, read real data):")
    assert "accuracy 97.12 %" in line and "IS 9.120" in line and "FID n/a" in line


def test_report_without_adjacency_words_still_reads(good_report: dict[str, Any]) -> None:
    """Reports written before `adjacency_words` existed still summarise."""
    guarantee = _line(describe(good_report), "guarantee:")
    assert guarantee.endswith("adjacency = add_remove; accountant: prv (upper bound)")
