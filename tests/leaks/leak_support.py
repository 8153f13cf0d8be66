"""Shared by the leak tests: a small real run per mode through the `tdpdm` CLI, in a
subprocess with fake AWS credentials in its environment and a Prometheus exporter, whose every
output is kept for the scans: files (release and custodian parts, and the ledger),
stdout/stderr, and scrapes of the metrics endpoint taken while it ran.

`--subset` keeps each record independently with a secret probability draw (fresh OS entropy), so
which records a run trained on is unknown to anyone. To scan for *those* records, the subprocess
replaces the entropy of the `subset` mechanism only (`SUBSET_KEY`, before `tdpdm.cli.main`
runs: no product flag does this); every other mechanism keeps its fresh secret key. The test
then recomputes the subset with the documented per-record rule (`subset_positions`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tdpdm_test_support import free_port

SUBSET = 300
SEED = 5
SUBSET_KEY = 0x2B7E_1516_28AE_D2A6_ABF7_1588_09CF_4F3C
"""The `subset` mechanism's key in the leak runs (a test constant; the product draws it fresh)."""
_WRAPPER = f"""
import secrets, sys
from tdpdm.privacy import randomness
randomness._entropy = (
    lambda purpose: {SUBSET_KEY} if purpose == "subset" else secrets.randbits(randomness.KEY_BITS)
)
from tdpdm.cli import main
raise SystemExit(main(sys.argv[1:]))
"""
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIALEAKCHECK7Q3ZX9W",
    "AWS_SECRET_ACCESS_KEY": "leakCheck/Secret+Key9fJ2kLmN0pQrStUvWxYz123",
    "AWS_SESSION_TOKEN": "FQoGZXIvYXdzLEAKCHECKtokenZ2l2ZW5fdG9rZW4K",
}


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

    @property
    def release(self) -> Path:
        return self.out / "release"

    @property
    def custodian(self) -> Path:
        return self.out / "custodian"

    def latents(self) -> Path:
        """A DP release in `released` mode; the custodian's private latents otherwise."""
        part = self.release if self.mode == "released" else self.custodian
        return part / "latents" / "latents.parquet"

    def artifacts(self) -> dict[str, bytes]:
        """Every file the run wrote (both parts and the ledger), by path relative to the run
        root (`out/release/...`, `out/custodian/...`, `ledger.json`)."""
        files = [p for p in self.out.rglob("*") if p.is_file()] + [self.ledger]
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(files)}


def subset_positions(n_file: int) -> np.ndarray:
    """File positions of the records a leak run trained on: `--subset SUBSET` keeps each of the
    `n_file` records independently with probability SUBSET / n_file, one draw per record in file
    order from the subset mechanism's key (`tdpdm.privacy.randomness.bernoulli_roles`)."""
    from tdpdm.privacy.randomness import MechanismKey, bernoulli_roles

    keep = bernoulli_roles(MechanismKey("subset", SUBSET_KEY), n_file, SUBSET / n_file)
    return np.flatnonzero(keep)


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def run_cli(root: Path, data_dir: Path, mode: str) -> CapturedRun:
    port = free_port()
    out, ledger = root / "out", root / "ledger.json"
    # epsilon 3, not 8: calibrating private mode's low-noise DP-SGD with PRV takes twice as long.
    argv = [
        sys.executable, "-c", _WRAPPER, "run",
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
