"""The flags of every command that runs the pipeline (`run`, `encode`, `diffuse`, `audit`), and
their translation into config overrides: one definition, so the CLI, the Helm chart's generated
command and the `ray job submit` entrypoints accept exactly the same inputs."""

from __future__ import annotations

import argparse
from typing import Any

from tdpdm.choices import DATASETS, MODES, STAGE1_MECHANISMS


class FlagError(ValueError):
    """A flag's value is malformed (one line, exit 2)."""


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (flags override it)")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--data-dir", dest="data_dir", help="folder or URI with the IDX files")
    p.add_argument(
        "--data",
        help="your own images instead of a built-in: a class-folder tree, a .parquet (Hugging "
        "Face layout) or a .npz, local or s3://; its ledger name comes from the path (or "
        "--set dataset=NAME)",
    )
    p.add_argument(
        "--data-test",
        dest="data_test",
        help="--data: a real test split of your images (same kinds), read only by --evaluate "
        "(custodian-only metrics)",
    )
    p.add_argument("--image-size", dest="image_size", type=int, help="--data: side in pixels")
    p.add_argument(
        "--classes",
        help="--data: the class names, comma-separated, declared public (default: the folder "
        "or ClassLabel names)",
    )
    p.add_argument("--channels", type=int, choices=(1, 3), help="--data: 1 grey or 3 RGB")
    p.add_argument("--privacy-unit", help="--data: column or .npz array of each record's unit")
    p.add_argument("--records-per-unit", type=int, help="records kept per unit (default 1)")
    p.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="download the data set from its mirrors if missing (sha256-checked)",
    )
    p.add_argument("--epsilon", type=float, help="target epsilon of this run")
    p.add_argument("--delta", type=float)
    p.add_argument(
        "--mode",
        choices=MODES,
        help="private (default; central DP, add/remove) or released (EXPERIMENTAL: a per-record "
        "latent release under replace-one; about 71 %% on MNIST at epsilon 10, 20 %% at 1, "
        "README 'Which latent mode?')",
    )
    p.add_argument(
        "--stage1-mechanism",
        dest="stage1.mechanism",
        choices=STAGE1_MECHANISMS,
        help="stage-1 privacy mechanism; lipschitz-vae (EXPERIMENTAL: 39-71 %% on MNIST at "
        "epsilon 10 with configs/released.yaml's label-conditioned decoder, chance at 1) needs "
        "--mode released",
    )
    p.add_argument(
        "--subset",
        help="expected number of training records: each record is kept independently with "
        "probability subset/N by a secret draw; or 'all'",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="public seed: initial weights and the synthetic sampler only; DP noise and sampling "
        "always come from fresh OS entropy, so two runs with the same seed differ",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--ledger", help="privacy ledger path")
    p.add_argument("--out", help="output folder or URI")
    p.add_argument("--job-id", dest="job_id", help="ledger job id (reuse it to resume)")
    p.add_argument("--cache-dir", dest="cache_dir")
    p.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="serve Prometheus metrics on this port while running",
    )
    p.add_argument(
        "--metrics-linger-s",
        dest="metrics_linger_s",
        type=float,
        default=0.0,
        help="keep serving metrics this many seconds after the run ends, so that "
        "Prometheus scrapes the final figures of a short batch job",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument(
        "--evaluate",
        dest="evaluation.enabled",
        action="store_true",
        default=None,
        help="custodian opt-in: score the synthetic data against the real train/test splits "
        "(unnoised; written to the custodian part only)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, e.g. --set stage2.epochs=30 (repeatable)",
    )


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave, as dotted config keys for `load_config` (None: not given)."""
    keys = (
        "dataset",
        "data_dir",
        "data",
        "data_test",
        "image_size",
        "channels",
        "privacy_unit",
        "records_per_unit",
        "download",
        "epsilon",
        "delta",
        "mode",
        "stage1.mechanism",
        "seed",
        "device",
        "ledger",
        "out",
        "job_id",
        "cache_dir",
        "metrics_port",
        "progress",
        "evaluation.enabled",
    )
    out: dict[str, Any] = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "classes", None) is not None:
        out["classes"] = [c.strip() for c in str(args.classes).split(",")]
    if getattr(args, "subset", None) is not None:
        out["subset"] = None if str(args.subset).lower() in ("all", "none", "0") else args.subset
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise FlagError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = None if value.strip().lower() in ("null", "none") else value.strip()
    return out
