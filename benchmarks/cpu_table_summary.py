"""Summarise issue 13's CPU rows from benchmarks/results.jsonl: per data set and epsilon, the
mean and spread over seeds of accuracy, IS, classifier-FD and pipeline time, as a Markdown table
beside the targets and the published anchors.

    python benchmarks/cpu_table_summary.py [--results FILE] [--since-commit ABC1234 ...]

A row counts when it is a private run on all records (n_records = the data set's 60,000) with
60,000 synthetic samples and a sufficient-statistics stage 2 (dp-moments or dp-mixture; its
notes say so), on a CPU; `--since-commit` picks one configuration's rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tdpdm.report.plots import load_result_rows  # noqa: E402

TARGETS = {("mnist", 10.0): 96.0, ("mnist", 1.0): 94.5, ("fashion-mnist", 10.0): 82.0,
           ("fashion-mnist", 1.0): 76.0}  # fmt: skip
"""Issue 13's CPU targets (accuracy %, DPDM CNN on 60k synthetic, real test split)."""
ANCHORS = {
    ("mnist", 10.0): "DP-Kernel 93.6, DP-GAN 92.7, DP-NTK 91.3, DPDM 97.7",
    ("mnist", 1.0): "DP-Kernel 94.0, DPDM 89.2, DP-GAN 92.4",
    ("fashion-mnist", 10.0): "DP-NTK 76.3, DP-GAN 70.3, DPDM 85.6",
    ("fashion-mnist", 1.0): "DPDM 76.4, DP-GAN 71.8",
}
"""Published figures (DPImageBench, GPU-hours each) the issue's rows are compared with."""


def is_cpu_row(row: dict, commits: set[str] | None) -> bool:
    return (
        row.get("mode") == "private"
        and row.get("n_records") == 60000
        and row.get("synthetic_count") == 60000
        and str(row.get("notes", "")).startswith(("stage2=dp-moments", "stage2=dp-mixture"))
        and str(row.get("hardware", "")).startswith("CPU")
        and (commits is None or row.get("commit") in commits)
    )


def _stat(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def summary(rows: list[dict]) -> str:
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], float(row["target_epsilon"])), []).append(row)
    lines = [
        "| data set | eps | seeds | accuracy % (mean ± sd) | target | IS | classifier-FD "
        "| pipeline s | published (eps as the row) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in sorted(groups, key=lambda k: (k[0] != "mnist", k[0], -k[1])):
        group = groups[key]
        seeds = ",".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"]))
        acc = [100 * r["accuracy"] for r in group]
        lines.append(
            f"| {key[0]} | {key[1]:g} | {seeds} | {_stat(acc, 2)} "
            f"| {TARGETS.get(key, float('nan')):.1f} "
            f"| {_stat([r['inception_score'] for r in group], 2)} "
            f"| {_stat([r['classifier_fd'] for r in group], 1)} "
            f"| {_stat([r['pipeline_time_s'] for r in group if r.get('pipeline_time_s')], 0)} "
            f"| {ANCHORS.get(key, '')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results.jsonl"))
    ap.add_argument("--since-commit", nargs="*", help="only rows recorded at these commits")
    args = ap.parse_args(argv)
    commits = set(args.since_commit) if args.since_commit else None
    rows = [r for r in load_result_rows(args.results) if is_cpu_row(r, commits)]
    if not rows:
        print("error: no CPU-table rows in the results file", file=sys.stderr)
        return 2
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
