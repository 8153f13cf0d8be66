"""Stage-1 DP-SGD throughput on Ray Train with 1 and 2 workers (and in-process, for reference).

    RAY_AUTH_MODE=disabled python benchmarks/scaling.py                  # CPU: local, 1, 2 workers
    RAY_AUTH_MODE=disabled python benchmarks/scaling.py --workers 1 2 4 --use-gpu

Samples per second = steps x expected (global) batch / time in the DP-SGD loop, measured on rank
0 from its first step to its last checkpoint: worker start-up is left out (it is printed
separately as the wall time of the whole fit). The workload is the real stage-1 autoencoder
(default `Stage1Config`) on real MNIST records; nothing is charged (a throw-away recorder). Each
Ray worker gets 1 CPU and, by Ray's default, one torch thread; in-process uses `--threads`.
On a shared machine the figures move with the other load: rerun and compare ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdpdm.config import DistributedConfig, Stage1Config
from tdpdm.data.loader import load_split
from tdpdm.stages.dpsgd import DPSGDPlan, train_dpsgd
from tdpdm.stages.encode import images_to_tensor, new_autoencoder, reconstruction_loss


class _Discard:
    """Stands in for a privacy session: a benchmark, nothing to charge."""

    def record(self, event: object) -> None:
        pass


def _in_process(images, plan, cfg, seed) -> float:
    times: list[float] = []
    started = time.perf_counter()  # as on a Ray worker: model wrapping and step 1 included
    train_dpsgd(
        new_autoencoder(cfg, seed),
        [images],
        reconstruction_loss,
        plan,
        _Discard(),
        lr=cfg.lr,
        seed=seed,
        device="cpu",
        progress=False,
        on_step=lambda step, loss: times.append(time.perf_counter()),
    )
    return len(times) * plan.expected_batch_size / (times[-1] - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in-process (1, as on each Ray worker: the same work per step)",
    )
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/datasets")
    )
    parser.add_argument("--json", help="append the figures as one JSON line to this file")
    args = parser.parse_args()

    from tdpdm.distributed.ray_runtime import ray_session
    from tdpdm.distributed.stage1_train import train_dpsgd_on_ray

    cfg, seed = Stage1Config(), 0
    raw, _ = load_split("mnist", args.data_dir, "train")
    images = images_to_tensor(np.asarray(raw[: args.records]))
    plan = DPSGDPlan("bench", 1.0, args.batch / args.records, args.steps, 1.0, args.batch)
    print(
        f"stage-1 autoencoder (latent {cfg.latent_dim}, width {cfg.width}), {args.records} MNIST "
        f"records, global batch {args.batch}, {args.steps} DP-SGD steps; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    figures: dict[str, float] = {}
    if not args.use_gpu:
        torch.set_num_threads(args.threads)
        figures["in_process"] = _in_process(images, plan, cfg, seed)
        print(f"in-process (no Ray, {torch.get_num_threads()} threads): "
              f"{figures['in_process']:.1f} samples/s")  # fmt: skip
    with ray_session(None) as _, tempfile.TemporaryDirectory() as storage:
        for workers in args.workers:
            t = time.perf_counter()
            outcome = train_dpsgd_on_ray(
                functools.partial(new_autoencoder, cfg, seed),
                [images],
                reconstruction_loss,
                plan,
                _Discard(),
                cfg=DistributedConfig(
                    num_workers=workers, use_gpu=args.use_gpu, checkpoint_every=args.steps
                ),
                storage_path=storage,
                lr=cfg.lr,
                seed=seed,
                progress=False,
            )
            figures[f"ray_{workers}"] = outcome.samples_per_second
            print(
                f"Ray Train, {workers} worker(s): {outcome.samples_per_second:.1f} samples/s "
                f"(fit wall time {time.perf_counter() - t:.0f} s incl. start-up)"
            )
    base = figures.get("ray_1")
    for workers in args.workers:
        if base and workers != 1:
            ratio = figures[f"ray_{workers}"] / base
            figures[f"ratio_{workers}_over_1"] = ratio
            print(f"scaling ratio {workers} workers / 1 worker: {ratio:.2f}x")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(figures | {"args": vars(args)}) + "\n")


if __name__ == "__main__":
    main()
