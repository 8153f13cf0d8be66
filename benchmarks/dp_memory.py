"""Seconds a step and peak memory of stage 1's DP-SGD, whole Poisson batches against virtual
steps (`stage1.physical_batch_size`), on random images (no private data; the figures in the
README's "Memory" paragraph). One setting a process, since peak RSS only grows:

    python benchmarks/dp_memory.py --physical 256 --width 64
    python benchmarks/dp_memory.py --physical none --width 64
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdpdm.config import Stage1Config
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dpsgd import DPSGDPlan, train_dpsgd
from tdpdm.stages.encode import new_autoencoder, reconstruction_loss


class _Tally:
    def record(self, event: object) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--physical", default="256", help="records a backward pass, or none")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024, help="expected Poisson batch")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    physical = None if args.physical == "none" else int(args.physical)
    model = new_autoencoder(Stage1Config(latent="spatial", width=args.width), 0)
    images = torch.rand(60000, 1, 28, 28)
    plan = DPSGDPlan("bench", 1.0, args.batch / 60000, args.steps, 1.0, args.batch)
    start = time.perf_counter()
    train_dpsgd(
        model,
        [images],
        reconstruction_loss,
        plan,
        _Tally(),
        lr=1e-3,
        key=MechanismKey.fresh("bench"),
        device="cpu",
        progress=False,
        physical_batch_size=physical,
    )
    seconds = (time.perf_counter() - start) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"physical={physical} width={args.width} batch={args.batch}: "
        f"{seconds:.2f} s/step, peak RSS {peak:.2f} GB, {torch.get_num_threads()} threads"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
