"""The lines a person reads at the end of a run, and the hardware a result row names."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import torch

from tdpdm.report.text import epsilon_text


def describe(report: dict[str, Any]) -> str:
    p, m = report["privacy"], report["metrics"]

    def fmt(v, pct=False):
        if v is None:
            return "n/a"
        return f"{100 * v:.2f} %" if pct else f"{v:.3f}"

    words = p.get("adjacency_words", "")
    lines = [
        f"guarantee: epsilon = {epsilon_text(p['epsilon'])} (upper bound), delta = {p['delta']:g}, "
        f"adjacency = {p['adjacency']}"
        + (f" ({words})" if words else "")
        + f"; accountant: {p['accountant']}",
        "mechanisms: " + "; ".join(json.dumps(e, sort_keys=True) for e in p["events"]),
        f"budget {report['dataset']}: spent "
        f"{epsilon_text(p['budget']['spent_epsilon_after_run'])} of {p['budget']['epsilon']:g}",
    ]
    if any(v is not None for v in m.values()):
        lines.append(
            f"metrics (custodian-only, read real data): accuracy {fmt(m['accuracy'], True)}, "
            f"IS {fmt(m['inception_score'])}, classifier-FD {fmt(m['classifier_fd'])}, "
            f"FID {fmt(m['fid'])}"
        )
    else:
        lines.append("metrics: not evaluated (evaluation.enabled is off)")
    lines.append(f"wall time: {report['wall_time_s']:.0f} s")
    return "\n".join(lines)


def hardware(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu
    return {
        "device": device,
        "device_name": name,
        "cpu": cpu,
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
