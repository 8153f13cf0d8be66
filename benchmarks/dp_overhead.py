"""DP-SGD step time against a non-private step of the same model and batch, per Opacus
per-sample-gradient mode, for both stage models. Prints one line per (model, mode).

    python benchmarks/dp_overhead.py                 # CPU, then the GPU when there is one
    python benchmarks/dp_overhead.py --device cuda   # one device only

GPU timings synchronise the device before reading the clock (kernels are asynchronous).

The DP step is the real one (`tdpdm.stages.dpsgd.train_dpsgd`: Poisson sampling, clipping,
noise); nothing is charged anywhere (a throw-away session object collects the events).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdpdm.models.autoencoder import ConvAutoencoder
from tdpdm.models.diffusion import LatentDenoiser, diffusion_loss
from tdpdm.stages.dpsgd import DPSGDPlan, train_dpsgd
from tdpdm.stages.encode import reconstruction_loss


class _Collect:
    """Stands in for a privacy session: synthetic inputs, nothing to charge."""

    def record(self, event: object) -> None:
        self.event = event


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _nonprivate_step_s(model, tensors, loss_fn, batch: int, steps: int, device: str) -> float:
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = [t[:batch].to(device) for t in tensors]
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model, data).mean().backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _dp_step_s(model, tensors, loss_fn, batch: int, steps: int, device: str, mode: str) -> float:
    n = len(tensors[0])
    plan = DPSGDPlan("bench", 1.0, batch / n, steps, 1.0, batch)
    warm = DPSGDPlan("bench", 1.0, batch / n, 2, 1.0, batch)
    kwargs = dict(lr=1e-3, seed=0, device=device, progress=False, grad_sample_mode=mode)
    train_dpsgd(model, tensors, loss_fn, warm, _Collect(), **kwargs)
    _sync(device)
    start = time.perf_counter()
    train_dpsgd(model, tensors, loss_fn, plan, _Collect(), **kwargs)
    _sync(device)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda[:i], or auto (cpu + cuda)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--records", type=int, default=8192)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    n = args.records
    images = torch.rand(n, 1, 28, 28)
    latents, labels = torch.rand(n, 32) * 2 - 1, torch.randint(0, 10, (n,))
    cases = [
        (
            "autoencoder (stage 1)",
            lambda: ConvAutoencoder(32, 32),
            [images],
            reconstruction_loss,
            512,
        ),
        (
            "denoiser (stage 2, K=4)",
            lambda: LatentDenoiser(32, 10, 192, 2),
            [latents, labels],
            lambda m, b: diffusion_loss(m, b[0], b[1], 4, 0.1),
            1024,
        ),
    ]
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print(f"error: --device {args.device}: torch sees no CUDA device", file=sys.stderr)
        return 2
    for device in devices:
        _bench_device(device, cases, args.steps)
    return 0


def _bench_device(device: str, cases, steps: int) -> None:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"CPU, torch threads {torch.get_num_threads()}"
    print(f"device: {device} ({name})")
    for label, make, tensors, loss_fn, batch in cases:
        base = _nonprivate_step_s(make(), tensors, loss_fn, batch, steps, device)
        for mode in ("hooks", "ghost"):
            dp = _dp_step_s(make(), tensors, loss_fn, batch, steps, device, mode)
            print(
                f"  {label:26} batch {batch:5}  non-private {base * 1e3:8.1f} ms  "
                f"DP[{mode:5}] {dp * 1e3:8.1f} ms  ratio {dp / base:6.2f}x"
            )


if __name__ == "__main__":
    raise SystemExit(main())
