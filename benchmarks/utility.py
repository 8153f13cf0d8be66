"""Run the evaluation protocol (DESIGN section 6) for one data set, epsilon and mode; print one
result row. `--record` appends it to benchmarks/RESULTS.md and benchmarks/results.jsonl.

Each benchmark run gets a fresh ledger (its own budget = the row's epsilon), so rows are
independent guarantees; the epsilon printed is the accountant's upper bound for what ran.

    python benchmarks/utility.py --dataset mnist --epsilon 10 --mode private --subset 10000
    python benchmarks/utility.py --full --device cuda ...   # the full protocol (60k, 60k samples)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tdpdm.config import load_config  # noqa: E402
from tdpdm.pipeline import epsilon_text, run_pipeline  # noqa: E402

FULL = {"subset": None, "evaluation.synthetic_count": 60000, "evaluation.classifier_epochs": 10}


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def row_of(report: dict[str, Any]) -> dict[str, Any]:
    p, m, hw = report["privacy"], report["metrics"], report["hardware"]
    mix = ", ".join(
        f"{e['stage']}:{e['kind']}(sigma={e['noise_multiplier']:.3g}"
        + (
            f", q={e['sampling_rate']:.3g}, T={e['steps']}"
            if e["kind"] == "poisson_gaussian"
            else ""
        )
        + ")"
        for e in p["events"]
    )
    return {
        "dataset": report["dataset"],
        "epsilon": p["epsilon"],
        "target_epsilon": p["target_epsilon"],
        "delta": p["delta"],
        "adjacency": p["adjacency"],
        "mode": report["mode"],
        "n_records": report["n_records"],
        "synthetic_count": report["config"]["evaluation"]["synthetic_count"],
        "seed": report["seed"],
        "accuracy": m["accuracy"],
        "inception_score": m["inception_score"],
        "classifier_fd": m["classifier_fd"],
        "fid": m["fid"],
        "wall_time_s": report["wall_time_s"],
        "hardware": hw["device_name"]
        if hw["device"] != "cpu"
        else f"CPU x{hw['cpu_count']} ({hw['device_name']})",
        "mechanisms": mix,
        "commit": _commit(),
    }


def markdown_row(r: dict[str, Any]) -> str:
    def f(v: Any, pct: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:.2f}" if pct else f"{v:.3f}" if isinstance(v, float) else str(v)

    return (
        f"| {r['dataset']} | {r['mode']} | {epsilon_text(r['epsilon'])} | {r['delta']:g} "
        f"| {r['adjacency']} "
        f"| {r['n_records']} | {r['synthetic_count']} | {r['seed']} | {f(r['accuracy'], True)} "
        f"| {f(r['inception_score'])} | {f(r['classifier_fd'])} | {f(r['fid'])} "
        f"| {r['wall_time_s']:.0f} | {r['hardware']} | {r['mechanisms']} | {r['commit']} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    ap.add_argument("--epsilon", type=float, default=10.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--mode", default="private", choices=["private", "released"])
    ap.add_argument("--subset", default="10000", help="training records, or 'all'")
    ap.add_argument("--synthetic", type=int, help="synthetic samples for the evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default=str(ROOT / "configs" / "main.yaml"))
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--full", action="store_true", help="full protocol: all records, 60k samples")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--record", action="store_true", help="append to RESULTS.md/results.jsonl")
    ap.add_argument("--out", help="keep the run's outputs here (default: a temp dir)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tdpdm-bench-") as tmp:
        overrides: dict[str, Any] = {
            "dataset": args.dataset,
            "epsilon": args.epsilon,
            "delta": args.delta,
            "mode": args.mode,
            "seed": args.seed,
            "device": args.device,
            "data_dir": args.data_dir,
            "ledger": f"{tmp}/ledger.json",
            "out": args.out or f"{tmp}/out",
            "cache_dir": str(ROOT / ".tdpdm-cache"),
            "subset": None if args.subset == "all" else int(args.subset),
        }
        if args.full:
            overrides |= FULL
        if args.synthetic:
            overrides["evaluation.synthetic_count"] = args.synthetic
        for item in args.set:
            key, value = item.split("=", 1)
            overrides[key] = value
        cfg = load_config(args.config, overrides)
        report = run_pipeline(cfg, log=lambda m: print(m, file=sys.stderr)).report
    row = row_of(report)
    print(json.dumps(row))
    print(markdown_row(row))
    if args.record:
        with open(ROOT / "benchmarks" / "results.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(markdown_row(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
