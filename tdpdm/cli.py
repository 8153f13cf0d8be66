"""`tdpdm`: the command line. Every failure is one line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tdpdm import __version__
from tdpdm.choices import ADJACENCIES, DATASETS
from tdpdm.report.text import epsilon_text
from tdpdm.run_flags import FlagError, add_run_flags, run_overrides

EXIT_USER_ERROR = 2
EXIT_REFUSED = 3
EXIT_INTERNAL = 1
EXIT_AUDIT_REFUTED = 4


def _cmd_run(args: argparse.Namespace) -> int:
    from tdpdm.api import Synthesizer
    from tdpdm.config import load_config
    from tdpdm.pipeline import describe

    cfg = load_config(args.config, run_overrides(args))
    _maybe_serve_metrics(cfg.metrics_port)
    try:
        result = Synthesizer.from_config(cfg, log=_log).fit().result
    finally:
        _linger(cfg.metrics_port, args.metrics_linger_s)
    print(describe(result.report))
    _print_outputs(result.layout)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    """More records from a finished run's release: post-processing, no ledger, no real data."""
    from tdpdm.stages.resample import PublishedRun, fresh_seed

    run = PublishedRun.open(args.from_dir)
    seed = fresh_seed() if args.seed is None else args.seed
    out = args.out or run.default_output(args.n, seed)
    images, labels = run.sample(args.n, seed=seed, device=args.device, progress=False)
    run.write(out, images, labels, seed=seed)
    print(f"{len(labels)} synthetic records (seed {seed}) from run {run.report['run_id']}: {out}")
    print(f"guarantee (unchanged, sampling is post-processing): {run.guarantee['statement']}")
    return 0


def _print_outputs(layout) -> None:
    """Where the release (publishable) and custodian (never publish) parts are."""
    print(f"release (covered by the guarantee): {layout.release()}")
    print(f"  synthetic data: {layout.synthetic}")
    print(f"  sample grid:    {layout.release('samples.png')}")
    print(f"  report:         {layout.release('report.html')}")
    print(f"custodian only (never publish):     {layout.custodian()}")
    print(f"  report:         {layout.custodian('report.html')}")


def _maybe_serve_metrics(port: int | None) -> None:
    if port is None:
        return
    from tdpdm.telemetry import PrometheusTelemetry, set_telemetry

    telemetry = PrometheusTelemetry()
    bound = telemetry.serve(port)
    set_telemetry(telemetry)
    _log(f"serving Prometheus metrics on :{bound}/metrics")


def _linger(port: int | None, seconds: float) -> None:
    if port is not None and seconds > 0:
        import time

        _log(f"metrics stay up for {seconds:g} s")
        time.sleep(seconds)


def _cmd_budget(args: argparse.Namespace) -> int:
    from tdpdm.privacy.ledger import Ledger, NoBudgetError

    ledger = Ledger(args.ledger)
    if args.action == "set":
        if args.epsilon is None or args.delta is None:
            raise FlagError("budget set needs --epsilon and --delta")
        budget = ledger.set_budget(args.dataset, args.epsilon, args.delta, args.adjacency)
        print(f"{args.dataset}: budget set to {budget.describe()} in {ledger.store.location}")
        return 0
    budget = ledger.budget(args.dataset)
    if budget is None:
        raise NoBudgetError(f"no privacy budget is set for {args.dataset!r} in {args.ledger}")
    spent = ledger.spent(args.dataset)
    charges = ledger.charges(args.dataset)
    if args.json:
        print(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "budget": budget.as_dict(),
                    "spent_epsilon": spent.epsilon,
                    "accountant": spent.accountant,
                    "remaining_epsilon": max(0.0, budget.epsilon - spent.epsilon),
                    "charges": [c.as_dict() for c in charges],
                },
                indent=2,
            )
        )
        return 0
    print(f"{args.dataset}: budget {budget.describe()}")
    # Spent rounded up and remaining down: a printed budget must never look more generous.
    remaining = max(0.0, budget.epsilon - spent.epsilon)
    print(
        f"  spent epsilon {epsilon_text(spent.epsilon)} "
        f"({spent.accountant}); remaining {math.floor(remaining * 1000 + 1e-9) / 1000:.3f}"
    )
    from tdpdm.privacy.ledger import describe_events

    for c in charges:
        events = c.counted_events() if c.status != "cancelled" else c.planned
        print(
            f"  [{c.status:9}] {c.created} job {c.job_id}: {describe_events(events)}"
            + (f"  ({c.note})" if c.note else "")
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tdpdm.data.download import ensure_dataset
    from tdpdm.data.loader import load_split
    from tdpdm.evaluate.metrics import evaluate_synthetic
    from tdpdm.stages.synthetic_io import read_synthetic

    images, labels, meta = read_synthetic(args.synthetic)
    dataset = args.dataset or meta.get("dataset") or "mnist"
    data_dir = ensure_dataset(dataset, args.data_dir, download_if_missing=False)
    metrics = evaluate_synthetic(
        images,
        labels,
        real_train=load_split(dataset, data_dir, "train"),
        real_test=load_split(dataset, data_dir, "test"),
        dataset=dataset,
        device=args.device,
        seed=args.seed,
        cache_dir=args.cache_dir,
        classifier_epochs=args.classifier_epochs,
        evaluator_epochs=args.evaluator_epochs,
        inception_weights=args.inception_weights,
        inception_sha256=args.inception_sha256,
    )
    if meta:
        print(
            f"guarantee in file: epsilon {meta.get('epsilon')}, delta {meta.get('delta')}, "
            f"{meta.get('adjacency')}"
        )
    print("metrics (custodian-only, computed against the real data):")
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdpdm",
        description="Differentially private synthetic images: DP encoding + latent diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"tdpdm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the whole pipeline: encode, diffuse, sample, report")
    add_run_flags(run)
    run.set_defaults(func=_cmd_run)

    for name, helptext in (
        ("encode", "stage 1 only: DP autoencoder and latents (charges the ledger)"),
        ("diffuse", "stage 2 only: diffusion on latents from `encode`, sampling and report"),
    ):
        p = sub.add_parser(name, help=helptext)
        add_run_flags(p)
        if name == "diffuse":
            p.add_argument(
                "--from",
                dest="from_dir",
                required=True,
                help="the --out folder of a finished `tdpdm encode`",
            )
        p.set_defaults(func=_cmd_stage, stage=name)

    sample = sub.add_parser(
        "sample", help="draw more synthetic records from a finished run's release (no privacy cost)"
    )
    sample.add_argument(
        "--from", dest="from_dir", metavar="RUN", required=True,
        help="a finished run's --out folder, or a copy of its release/ folder",
    )  # fmt: skip
    sample.add_argument("--n", type=int, required=True, help="number of records to draw")
    sample.add_argument("--out", help="Parquet file (default: RUN/release/more/...parquet)")
    sample.add_argument("--seed", type=int, help="public sampler seed (default: a fresh one)")
    sample.add_argument("--device", default="cpu")
    sample.set_defaults(func=_cmd_sample)

    budget = sub.add_parser("budget", help="show or set a data set's privacy budget")
    budget.add_argument("action", choices=["show", "set"])
    budget.add_argument("--ledger", required=True)
    budget.add_argument("--dataset", required=True)
    budget.add_argument("--epsilon", type=float)
    budget.add_argument("--delta", type=float)
    budget.add_argument("--adjacency", default="add_remove", choices=ADJACENCIES)
    budget.add_argument("--json", action="store_true")
    budget.set_defaults(func=_cmd_budget)

    ev = sub.add_parser("evaluate", help="evaluate a synthetic Parquet data set")
    ev.add_argument("--synthetic", required=True, help="synthetic Parquet file or URI")
    ev.add_argument("--dataset", choices=DATASETS)
    ev.add_argument("--data-dir", dest="data_dir", default="../shared/datasets")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--cache-dir", dest="cache_dir", default=".tdpdm-cache")
    ev.add_argument("--classifier-epochs", type=int, default=5)
    ev.add_argument("--evaluator-epochs", type=int, default=3)
    ev.add_argument("--inception-weights")
    ev.add_argument("--inception-sha256")
    ev.set_defaults(func=_cmd_evaluate)

    audit = sub.add_parser(
        "audit",
        help="empirical privacy audit: one charged run with canaries, epsilon lower bound "
        f"(exit {EXIT_AUDIT_REFUTED} if it exceeds the claimed epsilon)",
    )
    add_run_flags(audit)
    audit.add_argument("--canaries", type=int, default=1000, help="number of canaries m")
    audit.add_argument("--confidence", type=float, default=0.95)
    audit.add_argument("--scorer", help="membership attack (default: the mode's own)")
    audit.set_defaults(func=_cmd_audit)
    return parser


def _cmd_audit(args: argparse.Namespace) -> int:
    from tdpdm.audit.run import run_audit
    from tdpdm.config import load_config

    cfg = load_config(args.config, run_overrides(args))
    _maybe_serve_metrics(cfg.metrics_port)
    try:
        result = run_audit(
            cfg,
            canaries=args.canaries,
            confidence=args.confidence,
            scorer=args.scorer,
            log=_log,
        )
    finally:
        _linger(cfg.metrics_port, args.metrics_linger_s)
    a = result.audit
    print(a["verdict"])
    print(
        f"claimed epsilon {epsilon_text(a['claimed']['epsilon'])} (upper bound, delta "
        f"{a['claimed']['delta']:g}, {a['claimed']['adjacency']}); audited lower bound "
        f"{result.lower_bound:.3f} at {100 * args.confidence:g} % confidence; attack AUC "
        f"{a['attack']['auc']:.3f}, TPR at FPR 1 % {a['attack']['tpr_at_fpr']['0.01']:.3f}"
    )
    print(f"audit: {result.out}/audit.html  ({result.out}/audit.json)")
    return EXIT_AUDIT_REFUTED if result.lower_bound > result.claimed else 0


def _cmd_stage(args: argparse.Namespace) -> int:
    from tdpdm.config import load_config
    from tdpdm.pipeline import describe, run_diffuse_stage, run_encode_stage

    cfg = load_config(args.config, run_overrides(args))
    _maybe_serve_metrics(cfg.metrics_port)
    if args.stage == "encode":
        info = run_encode_stage(cfg, log=_log)
        print(json.dumps(info, indent=2, default=str))
        return 0
    from_dir = args.from_dir  # a URI as given: Path() would fold s3://b/x into s3:/b/x
    if "://" not in from_dir:
        from_dir = Path(from_dir).as_posix()
    result = run_diffuse_stage(cfg, from_dir, log=_log)
    print(describe(result.report))
    _print_outputs(result.layout)
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("tdpdm: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        code, line = _classify(err)
        print(f"tdpdm: error: {line}", file=sys.stderr)
        return code


def _classify(err: Exception) -> tuple[int, str]:
    from tdpdm.privacy.ledger import BudgetExceededError

    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, BudgetExceededError):
        return EXIT_REFUSED, message
    user_errors = (ValueError, PermissionError, FileNotFoundError, LookupError, RuntimeError)
    if isinstance(err, user_errors):
        return EXIT_USER_ERROR, f"{message}"
    return EXIT_INTERNAL, f"{type(err).__name__}: {message} (rerun with --debug for details)"


if __name__ == "__main__":
    raise SystemExit(main())
