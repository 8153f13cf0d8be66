"""Loss budget (issues 13 and 14): where downstream accuracy is lost between real data and the
DP pipeline, for one finished pipeline run (`--run OUT`, e.g. `benchmarks/utility.py --out OUT`).

CUSTODIAN-ONLY MEASUREMENT. Every row but the DP pipeline's own ((d) below; (e) of a released
run) reads the real training split WITHOUT differential privacy and prints figures computed from
it (accuracies of classifiers trained on real records, their reconstructions, or models fitted
to their clean or re-noised latents). Nothing here is a DP release, nothing is charged to a
ledger, and no output of this script may be published as covered by a guarantee. Only the
custodian runs it, on its own data, to see which stage to fix.

A `released`-mode run (its report's mode; either stage-1 mechanism) gets issue 14's rows instead,
documented in benchmarks/loss_budget_released.py: a recon, b clean, c noisy-labels,
d noisy-latents, e release (letters or names), and `real`; default a,b,c,d,e.

Rows of a `private`-mode run, each the DPDM CNN's accuracy on the real test split
(tdpdm.evaluate.downstream: epoch chosen on a held-out split of the CNN's own training set,
never on the test split):
  (a) trained on the real training split;
  (b) trained on the run's DP autoencoder's reconstructions of the real training split (what
      stage 1 alone keeps);
  (c) trained on `--synthetic` samples of a NON-private fit of the stage-2 family to the same
      latents (class Gaussians with full covariance, or `--components` k-means mixtures per
      class), decoded by the same autoencoder (what stage 2's family could keep without noise);
  (d) the DP pipeline itself: read from the run's custodian report (its opted-in evaluation),
      or, when the run stopped before evaluating, the same CNN trained on its released
      synthetic data (release/synthetic: a DP output; only the test split is real).

    python benchmarks/loss_budget.py --run runs/mnist-spatial-eps10 --rows a,b,c
    python benchmarks/loss_budget.py --run runs/released-eps10 --rows a,b,c,d,e
    python benchmarks/loss_budget.py --dataset mnist --epochs 5 --rows a
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # its released-mode rows, next to it

import loss_budget_released as released  # noqa: E402

from tdpdm.config import Stage1Config  # noqa: E402
from tdpdm.data.loader import load_split  # noqa: E402
from tdpdm.evaluate.downstream import downstream_accuracy  # noqa: E402
from tdpdm.stages.artifacts import RunLayout, load_model_state  # noqa: E402
from tdpdm.stages.deconvolve import LatentMixture  # noqa: E402
from tdpdm.stages.encode import build_autoencoder, decode, encode  # noqa: E402
from tdpdm.stages.sample import generate  # noqa: E402
from tdpdm.stages.synthetic_io import read_synthetic  # noqa: E402

VARIANCE_FLOOR = 1e-4


def _kmeans(x: torch.Tensor, k: int, seed: int, iterations: int = 30) -> torch.Tensor:
    """Cluster assignments (n,) by Lloyd's algorithm from k random records."""
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(dim=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(dim=0)
    return assign


def nonprivate_mixture(
    latents: np.ndarray, labels: np.ndarray, num_classes: int, components: int, seed: int
) -> LatentMixture:
    """Class-conditional Gaussian mixtures fitted WITHOUT DP: per class, k-means into
    `components` clusters, then each cluster's weight, mean and full covariance."""
    d = latents.shape[1]
    model = LatentMixture(num_classes * components, d, num_classes)
    model.class_shares.zero_()
    x_all = torch.from_numpy(latents).double()
    eye = torch.eye(d, dtype=torch.float64)
    for c in range(num_classes):
        x = x_all[torch.from_numpy(labels == c)]
        assign = _kmeans(x, components, seed + c) if components > 1 else torch.zeros(len(x))
        for j in range(components):
            k = c * components + j
            members = x[assign == j]
            if len(members) < 2:
                model.log_weights[k] = -math.inf
                continue
            mean = members.mean(dim=0)
            cov = torch.cov(members.T) + VARIANCE_FLOOR * eye
            model.log_weights[k] = math.log(len(members) / len(x))
            model.means[k] = mean.float()
            model.scale_tril[k] = torch.linalg.cholesky(cov).float()
            model.class_shares[k, c] = 1.0
    return model


def read_report(run: str) -> dict[str, Any]:
    # The release report (written before the run's own evaluation): rows b and c can start
    # while the run is still evaluating; row d reads the custodian report when it is asked.
    return json.loads(Path(RunLayout(run).release("report.json")).read_text())


def dp_pipeline_accuracy(run: str, key: str, fallback_key: str, cnn) -> tuple[str, float]:
    """(result key, accuracy) of the DP pipeline itself: `key` and its custodian report's, or
    when the run did not evaluate, `fallback_key` and the CNN trained on its released synthetic
    data (a DP output)."""
    custodian = Path(RunLayout(run).custodian("report.json"))
    if custodian.exists():
        accuracy = json.loads(custodian.read_text())["metrics"].get("accuracy")
        if accuracy is not None:
            return key, float(accuracy)
    images, labels, _ = read_synthetic(RunLayout(run).synthetic)
    return fallback_key, cnn(images, labels)


def load_run(run: str) -> tuple[dict[str, Any], torch.nn.Module]:
    layout = RunLayout(run)
    report = read_report(run)
    cfg = Stage1Config(**report["config"]["stage1"])
    model = build_autoencoder(cfg, num_classes=10)  # the built-in data sets
    load_model_state(layout.autoencoder, model)
    return report, model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished pipeline run's --out folder (rows b, c, d)")
    ap.add_argument("--dataset", help="row a alone, without --run: mnist or fashion-mnist")
    ap.add_argument(
        "--rows",
        help="comma-separated rows: a,b,c,d (default a,b,c); released run: a-e or real, recon, "
        "clean, noisy-labels, noisy-latents, release (default a,b,c,d,e)",
    )
    ap.add_argument("--data-dir", default="/work/shared/datasets")
    ap.add_argument("--epochs", type=int, help="CNN epochs (default: the run's evaluation's)")
    ap.add_argument(
        "--synthetic",
        type=int,
        help="samples for row (c) (default 60000); released run: rows b-d (default: the run's "
        "evaluation.synthetic_count)",
    )
    ap.add_argument(
        "--components",
        type=int,
        help="row (c): mixture components (default 1); released run: components per class "
        "(default: the run's stage2.mixture_components)",
    )
    ap.add_argument(
        "--iterations", type=int, help="released run: fit iterations (default: the run's)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    mode = read_report(args.run)["mode"] if args.run else "private"
    rows = (args.rows or ("a,b,c,d,e" if mode == "released" else "a,b,c")).split(",")
    if mode == "released":
        letters = [released.row_letter(r) for r in rows]
        report = read_report(args.run)
        model, dataset = None, report["dataset"]
        epochs = args.epochs or report["config"]["evaluation"]["classifier_epochs"]
    elif args.run:
        report, model = load_run(args.run)
        dataset = report["dataset"]
        epochs = args.epochs or report["config"]["evaluation"]["classifier_epochs"]
    elif rows == ["a"] and args.dataset and args.epochs:
        report, model, dataset, epochs = {}, None, args.dataset, args.epochs
    else:
        ap.error("--run is needed, except for --rows a with --dataset and --epochs")
    print(
        f"CUSTODIAN-ONLY loss budget for {args.run} ({dataset}, {mode} mode): rows other than "
        f"the DP pipeline's read the real training split without DP; CNN {epochs} epochs, "
        f"seed {args.seed}",
        file=sys.stderr,
    )
    train_x, train_y = load_split(dataset, args.data_dir, "train")
    test_x, test_y = load_split(dataset, args.data_dir, "test")

    def cnn(images: np.ndarray, labels: np.ndarray) -> float:
        out = downstream_accuracy(
            images,
            labels,
            test_x,
            test_y,
            epochs=epochs,
            seed=args.seed,
            device=args.device,
            progress=False,
        )
        return float(out["accuracy"])

    results: dict[str, Any] = {"run": args.run, "dataset": dataset, "epochs": epochs}
    if mode == "released":
        results |= released.released_budget(
            args.run,
            report,
            letters,
            (train_x, train_y),
            cnn,
            lambda: dp_pipeline_accuracy(args.run, "e_release", "e_release_from_synthetic", cnn),
            synthetic=args.synthetic,
            components=args.components,
            iterations=args.iterations,
            seed=args.seed,
            device=args.device,
            log=lambda line: print(line, file=sys.stderr),
        )
        print(json.dumps(results))
        return 0
    latents = None
    for row in rows:
        t0 = time.perf_counter()
        if row == "a":
            results["a_real"] = cnn(train_x, train_y)
        elif row == "b":
            latents = encode(model, train_x, args.device) if latents is None else latents
            results["b_reconstructions"] = cnn(
                decode(model, latents, args.device, labels=train_y), train_y
            )
        elif row == "c":
            latents = encode(model, train_x, args.device) if latents is None else latents
            components = args.components or 1
            mixture = nonprivate_mixture(
                latents, train_y, int(train_y.max()) + 1, components, args.seed
            )
            images, labels = generate(
                mixture,
                model,
                args.synthetic or 60000,
                num_classes=int(train_y.max()) + 1,
                steps=0,
                guidance=1.0,
                seed=args.seed,
                device=args.device,
                progress=False,
            )
            results[f"c_nonprivate_{components}comp"] = cnn(images, labels)
        elif row == "d":
            key, accuracy = dp_pipeline_accuracy(
                args.run, "d_dp_pipeline", "d_dp_pipeline_from_release", cnn
            )
            results[key] = accuracy
        else:
            raise SystemExit(f"unknown row {row!r}")
        print(f"row {row}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
