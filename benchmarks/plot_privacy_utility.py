"""Draw the privacy-utility plot of the benchmark rows: accuracy and classifier-FD against
epsilon, a line per data set, mode and stage-2 variant. Writes docs/privacy_utility.png (the
README's figure) from benchmarks/results.jsonl.

    python benchmarks/plot_privacy_utility.py [--results FILE] [--out FILE] [--dataset mnist]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tdpdm.report.plots import load_result_rows, privacy_utility_plot  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results.jsonl"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "privacy_utility.png"))
    ap.add_argument("--dataset", help="only this data set's rows")
    args = ap.parse_args(argv)
    rows = load_result_rows(args.results, args.dataset)
    if not rows:
        print(f"error: no result rows in {args.results}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    privacy_utility_plot(rows, args.out)
    print(f"wrote {args.out} from {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
