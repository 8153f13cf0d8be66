"""Shared by the leak tests: a small real run per mode through the `tdpdm` CLI, in a
subprocess with fake AWS credentials in its environment and a Prometheus exporter, whose every
output is kept for the scans: files, stdout/stderr, and scrapes of the metrics endpoint taken
while it ran.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SUBSET = 300
SEED = 5
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIALEAKCHECK7Q3ZX9W",
    "AWS_SECRET_ACCESS_KEY": "leakCheck/Secret+Key9fJ2kLmN0pQrStUvWxYz123",
    "AWS_SESSION_TOKEN": "FQoGZXIvYXdzLEAKCHECKtokenZ2l2ZW5fdG9rZW4K",
}


def shared_datasets_root() -> Path:
    env = os.environ.get("TDPDM_SHARED_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


@dataclass
class CapturedRun:
    mode: str
    root: Path
    out: Path
    ledger: Path
    returncode: int
    stdout: str
    stderr: str
    scrapes: list[str] = field(default_factory=list)

    def artifacts(self) -> dict[str, bytes]:
        """Every file the run wrote (outputs and ledger), by path relative to the run root."""
        files = [p for p in self.out.rglob("*") if p.is_file()] + [self.ledger]
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(files)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def run_cli(root: Path, data_dir: Path, mode: str) -> CapturedRun:
    port = _free_port()
    out, ledger = root / "out", root / "ledger.json"
    # epsilon 3, not 8: calibrating private mode's low-noise DP-SGD with PRV takes twice as long.
    argv = [
        sys.executable, "-m", "tdpdm.cli", "run",
        "--mode", mode, "--dataset", "mnist", "--data-dir", str(data_dir),
        "--epsilon", "3", "--delta", "1e-5", "--subset", str(SUBSET), "--seed", str(SEED),
        "--ledger", str(ledger), "--out", str(out), "--cache-dir", str(root / "cache"),
        "--metrics-port", str(port), "--metrics-linger-s", "6", "--no-progress",
        "--set", "distributed.backend=local",
        "--set", "stage1.epochs=1", "--set", "stage1.batch_size=64",
        "--set", "stage2.epochs=2", "--set", "stage2.batch_size=64",
        "--set", "stage2.mixture_iterations=10",
        "--set", "evaluation.enabled=false", "--set", "evaluation.synthetic_count=100",
    ]  # fmt: skip
    env = {**os.environ, **FAKE_CREDENTIALS, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # nothing may talk to a real endpoint
    stdout_path, stderr_path = root / "stdout.txt", root / "stderr.txt"
    scrapes: list[str] = []
    with stdout_path.open("w") as so, stderr_path.open("w") as se:
        proc = subprocess.Popen(argv, stdout=so, stderr=se, env=env, cwd=root)
        try:
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                text = _scrape(port)
                if text:
                    scrapes.append(text)
                time.sleep(0.5)
            if proc.poll() is None:
                proc.kill()
        finally:
            proc.wait(timeout=30)
    return CapturedRun(
        mode, root, out, ledger, proc.returncode,
        stdout_path.read_text(), stderr_path.read_text(), scrapes,
    )  # fmt: skip
