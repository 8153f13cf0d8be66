"""dp-moments vs dp-mixture (issue 13) on a finished run's private latents, at that run's stage-2
share of epsilon.

CUSTODIAN-ONLY MEASUREMENT. This reads `custodian/latents/latents.parquet` (the private latents,
never publishable) and fits each stage-2 model with its real DP mechanisms (noise from fresh OS
entropy, calibrated so that the run's encoder event plus the model's releases meet the run's
epsilon), but charges no ledger: the run already spent its budget once, on its own dp-moments
release. The fitted models and their samples are therefore NOT a DP release of the data set
(they would be a second, uncharged spend); only the accuracies below leave the custodian, as a
measurement. Each row: per model, `--synthetic` samples decoded by the run's DP decoder, then the
DPDM CNN (tdpdm.evaluate.downstream) trained on them and scored on the real test split.

    python benchmarks/dp_mixture.py --run runs/mnist-spatial-eps10-b1024 --components 1,2,4
    python benchmarks/dp_mixture.py --run RUN --components 1 --covariance full,pooled \
        --radius 1,0.6 --sigma 4.2     # dp-moments variants at a given noise (e.g. epsilon 1's)
    python benchmarks/dp_mixture.py --run RUN --components 8 --rounds 2 --centred \
        --mixture-covariance component --radius 1 --assignment spherical --noiseless \
        --synthetic 60000 --epochs 5   # the fitting procedure alone, without its noise

`--noiseless` runs the same releases at a noise multiplier of 1e-6: not a DP mechanism at all
(no epsilon is printed), a measurement of what the procedure loses apart from its noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tdpdm.config import RunConfig, Stage1Config  # noqa: E402
from tdpdm.data.loader import load_split  # noqa: E402
from tdpdm.evaluate.downstream import downstream_accuracy  # noqa: E402
from tdpdm.privacy.accountant import compute_epsilon  # noqa: E402
from tdpdm.privacy.adjacency import Adjacency  # noqa: E402
from tdpdm.privacy.calibration import calibrate_noise  # noqa: E402
from tdpdm.privacy.events import event_from_dict  # noqa: E402
from tdpdm.privacy.randomness import MechanismKey  # noqa: E402
from tdpdm.stages.artifacts import RunLayout, load_model_state  # noqa: E402
from tdpdm.stages.dp_mixture import (  # noqa: E402
    MixturePlan,
    fit_dp_mixture,
    mixture_model,
)
from tdpdm.stages.dp_moments import (  # noqa: E402
    CLIP_RATIO,
    DPMoments,
    MomentScales,
    MomentsPlan,
    class_gaussians,
)
from tdpdm.stages.encode import build_autoencoder  # noqa: E402
from tdpdm.stages.latents_io import read_latents  # noqa: E402
from tdpdm.stages.sample import generate  # noqa: E402

NOISELESS = 1e-6
"""`--noiseless`'s noise multiplier: the releases' arithmetic without their noise."""


class Unledgered:
    """Collects the events a fit ran (printed; no ledger: see the module docstring)."""

    def __init__(self) -> None:
        self.recorded: list = []

    def record(self, event) -> None:
        self.recorded.append(event)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished private dp-moments run's --out")
    ap.add_argument("--components", default="1,2,4", help="per class; 1 = dp-moments")
    ap.add_argument("--rounds", type=int, default=3, help="dp-mixture hard-EM rounds (T)")
    ap.add_argument("--synthetic", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3, help="CNN epochs")
    ap.add_argument("--data-dir", default="/work/shared/datasets")
    ap.add_argument("--seed", type=int, default=0, help="sampling and CNN only (public)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--covariance", help="comma list (default: the run's)")
    ap.add_argument("--radius", default="", help="dp-moments clip radius fractions, comma list")
    ap.add_argument("--sigma", type=float, help="dp-moments: this noise, not the run's epsilon's")
    ap.add_argument(
        "--mixture-covariance", default="class", choices=["class", "component"],
        help="dp-mixture: one covariance a class, or one a component (one more release)",
    )  # fmt: skip
    ap.add_argument(
        "--initial-ratio", type=float, default=1.0,
        help="dp-mixture: release 0's noise multiplier over the last release's",
    )  # fmt: skip
    ap.add_argument(
        "--centred", action="store_true",
        help="second moments about released centres (stage2.moments_centred)",
    )  # fmt: skip
    ap.add_argument(
        "--clip-ratio", type=float, default=CLIP_RATIO, help="centred: radius^2 / spread"
    )
    ap.add_argument(
        "--assignment", default="mahalanobis", choices=["mahalanobis", "spherical"],
        help="dp-mixture: how a record picks its component (stage2.mixture_assignment)",
    )  # fmt: skip
    ap.add_argument(
        "--noiseless", action="store_true",
        help="noise multiplier 1e-6: the procedure without its noise (not DP; no epsilon)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = RunLayout(args.run)
    report = json.loads(Path(layout.release("report.json")).read_text())
    privacy, config = report["privacy"], report["config"]
    adjacency, delta = Adjacency.parse(privacy["adjacency"]), float(privacy["delta"])
    spent = [event_from_dict(e) for e in privacy["events"] if e["stage"] == "encoder"]
    cfg = RunConfig(
        epsilon=float(privacy["target_epsilon"]),
        stage2={
            "mixture_covariance": args.mixture_covariance,
            "moments_centred": args.centred,
            "moments_clip_ratio": args.clip_ratio,
        },
    )
    covariances = (args.covariance or config["stage2"]["moments_covariance"]).split(",")
    radii = [float(r) for r in args.radius.split(",") if r] or [
        float(config["stage2"].get("moments_radius", 1.0))
    ]
    print(
        f"CUSTODIAN-ONLY: reads the private latents of {args.run}; no ledger charged, outputs "
        "are not a DP release",
        file=sys.stderr,
    )
    decoder = build_autoencoder(Stage1Config(**config["stage1"]), num_classes=10)  # built-ins
    load_model_state(layout.autoencoder, decoder)
    decoder.eval()
    z, labels, _ = read_latents(layout.latents("private"))
    classes = int(labels.max()) + 1
    test_x, test_y = load_split(report["dataset"], args.data_dir, "test")
    variants = [
        (int(k), cov, r)
        for k in args.components.split(",")
        for cov in covariances
        for r in (radii if int(k) == 1 else radii[:1])
    ]
    for k, covariance, radius in variants:
        t0 = time.perf_counter()
        session = Unledgered()
        key = MechanismKey.fresh("bench-stage2")
        if k == 1:
            plan = DPMoments().plan(cfg, len(z), adjacency, delta, spent)
            if args.sigma or args.noiseless:
                sigma = NOISELESS if args.noiseless else args.sigma
                plan = MomentsPlan(sigma, centred=args.centred, clip_ratio=args.clip_ratio)
            means, covs = class_gaussians(
                z, labels, num_classes=classes, covariance=covariance, plan=plan,
                session=session, key=key, scales=MomentScales.for_latent(z.shape[1], radius),
            )  # fmt: skip
            model = mixture_model(np.ones((classes, 1)), means[:, None], covs)
        else:
            per_component = args.mixture_covariance == "component"

            def planned(s: float, pc: bool = per_component) -> MixturePlan:
                return MixturePlan(
                    s, rounds=args.rounds, component_moments=pc, initial_ratio=args.initial_ratio,
                    centred=args.centred, clip_ratio=args.clip_ratio, assignment=args.assignment,
                )  # fmt: skip

            # DPMixture.plan's calibration, for any T and release-0 ratio
            sigma = NOISELESS if args.noiseless else calibrate_noise(
                lambda s: planned(s).events(), cfg.epsilon, delta, adjacency, fixed_events=spent
            )  # fmt: skip
            plan = planned(sigma)
            weights, means, covs = fit_dp_mixture(
                z, labels, num_classes=classes, components=k, covariance=covariance, plan=plan,
                session=session, key=key, scales=MomentScales.for_latent(z.shape[1], radius),
            )  # fmt: skip
            model = mixture_model(weights, means, covs)
        fit_s = time.perf_counter() - t0
        epsilon = (
            None
            if args.noiseless
            else round(compute_epsilon([*spent, *session.recorded], delta, adjacency).epsilon, 3)
        )
        images, synth_labels = generate(
            model, decoder, args.synthetic, num_classes=classes, steps=0, guidance=1.0,
            seed=args.seed, device="cpu", progress=False,
        )  # fmt: skip
        acc = downstream_accuracy(
            images, synth_labels, test_x, test_y, epochs=args.epochs, seed=args.seed,
            device="cpu", progress=False, num_classes=classes,
        )["accuracy"]  # fmt: skip
        centring = f" centred c={args.clip_ratio:g}" if args.centred else ""
        row = {
            "model": (
                f"dp-moments r={radius}"
                if k == 1
                else f"dp-mixture K={k} T={args.rounds} r={radius} {args.mixture_covariance} "
                f"r0={args.initial_ratio:g} {args.assignment}"
            )
            + centring
            + (" NOISELESS (not DP)" if args.noiseless else ""),
            "covariance": covariance,
            "accuracy": round(100 * float(acc), 2),
            "epsilon_with_encoder": epsilon,
            "events": [(e.stage, round(e.noise_multiplier, 4)) for e in session.recorded],
            "synthetic": args.synthetic,
            "cnn_epochs": args.epochs,
            "fit_s": round(fit_s, 1),
            "total_s": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
