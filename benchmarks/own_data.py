"""Own data vs built-in (issue 15): the same run from a PNG class-folder export of a built-in and
from its IDX files, to show that `--data` reads the records as the built-in path does.

CUSTODIAN-ONLY MEASUREMENT. Both runs opt in to the evaluation, which reads the real training
and test splits WITHOUT differential privacy; the accuracies printed here are custodian metrics,
never a DP release, and may not be published as covered by the runs' guarantees. Each run
charges its own ledger (under WORK/), never the project's.

Steps: export the built-in's train and test splits to WORK/<name>-png/{train,test}/<class>/*.png
(class names from the catalogue, in its order, declared with `classes` so the label ids match);
run the pipeline on `data: .../train` with `data_test: .../test`; run it again on the built-in;
print both downstream accuracies (CNN trained on the synthetic set, tested on the real test
split) side by side.

    python benchmarks/own_data.py --work runs/own-data --train-records 60000 --test-records 10000
    python benchmarks/own_data.py --work /tmp/own --train-records 2000 --test-records 1000 \
        --set stage1.epochs=1 --set stage2.epochs=3 --set evaluation.synthetic_count=1000
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from tdpdm.config import load_config  # noqa: E402
from tdpdm.data.catalog import get_spec  # noqa: E402
from tdpdm.data.loader import load_split  # noqa: E402
from tdpdm.pipeline import run_pipeline  # noqa: E402

BANNER = (
    "CUSTODIAN-ONLY: the evaluation reads the real train/test splits without noise; these "
    "accuracies are not DP releases"
)


def folder_names(dataset: str) -> list[str]:
    """The catalogue's class names as folder names (`T-shirt/top` -> `t-shirt-top`)."""
    names = [
        re.sub(r"[^a-z0-9._-]+", "-", n.lower()).strip("-") for n in get_spec(dataset).class_names
    ]
    if len(set(names)) != len(names):
        raise SystemExit(f"{dataset}: class names collide as folder names: {names}")
    return names


def export(dataset: str, data_dir: str, split: str, root: Path, limit: int | None) -> int:
    """The first `limit` records of a built-in split as root/<class>/<index>.png."""
    images, labels = load_split(dataset, data_dir, split)
    names = folder_names(dataset)
    count = len(images) if limit is None else min(limit, len(images))
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = root / names[int(labels[i])] / f"{i:05d}.png"
        if not path.exists():
            Image.fromarray(images[i], mode="L").save(path)
    return count


def run(overrides: dict[str, Any], config: str | None) -> tuple[float, dict[str, Any]]:
    cfg = load_config(config, overrides)
    started = time.perf_counter()
    result = run_pipeline(cfg, log=lambda line: print(f"  {line}", flush=True))
    return time.perf_counter() - started, result.report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    p.add_argument("--work", required=True, help="folder for the export, ledgers and runs")
    p.add_argument("--config", help="YAML config both runs share (flags and --set override it)")
    p.add_argument("--train-records", type=int, help="export only the first N training records")
    p.add_argument("--test-records", type=int, help="export only the first N test records")
    p.add_argument("--epsilon", type=float, default=10.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    work = Path(args.work)
    png = work / f"{args.dataset}-png"
    n_train = export(args.dataset, args.data_dir, "train", png / "train", args.train_records)
    n_test = export(args.dataset, args.data_dir, "test", png / "test", args.test_records)
    print(f"exported {n_train} train / {n_test} test records to {png}", flush=True)

    common: dict[str, Any] = {
        "epsilon": args.epsilon,
        "delta": args.delta,
        "seed": args.seed,
        "device": args.device,
        "progress": False,
        "evaluation.enabled": True,
        "cache_dir": str(work / "cache"),
    }
    for item in args.set:
        key, _, value = item.partition("=")
        common[key] = yaml.safe_load(value)
    folder = {
        **common,
        "dataset": f"{args.dataset}-png",
        "data": str(png / "train"),
        "data_test": str(png / "test"),
        "classes": folder_names(args.dataset),
        "ledger": str(work / "ledger-folder.json"),
        "out": str(work / "run-folder"),
    }
    builtin = {
        **common,
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "ledger": str(work / "ledger-idx.json"),
        "out": str(work / "run-idx"),
    }
    rows = {}
    for name, overrides in (("folder", folder), ("idx", builtin)):
        print(f"run from {name} ...", flush=True)
        seconds, report = run(overrides, args.config)
        metrics = report["metrics"]
        rows[name] = {
            "accuracy": metrics.get("accuracy"),
            "inception_score": metrics.get("inception_score"),
            "classifier_fd": metrics.get("classifier_fd"),
            "epsilon": report["privacy"]["epsilon"],
            "n_records": report["n_records"],
            "wall_time_s": round(seconds, 1),
        }
    print(BANNER)
    note = "" if args.train_records is None else " (the folder holds only the exported records)"
    print(f"{args.dataset}: same config from a PNG folder and from the IDX built-in{note}")
    for name, row in rows.items():
        print(f"  {name:6s} {json.dumps(row)}")
    (work / "own_data.json").write_text(json.dumps({"note": BANNER, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
