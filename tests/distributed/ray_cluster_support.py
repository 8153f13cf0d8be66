"""A real two-node Ray cluster on 127.0.0.1 for one test, torn down whatever happens.

Both `ray start --block` processes run in their own process groups; teardown signals exactly
those groups (SIGTERM, then SIGKILL after a short grace: a graceful `ray start --block` exit
outlasted 20 s on 2 busy cores, and nothing of the cluster is kept), then any process left whose
command line names this cluster's private temp dir. `ray stop` is never used: it would stop
every other Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tdpdm_test_support import free_port

RAY = str(Path(sys.executable).with_name("ray"))
STOP_GRACE_S = 5


def ray_env() -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class LocalCluster:
    gcs_port: int
    dashboard_port: int
    temp_dir: str
    log_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    worker_temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="tdw", dir="/tmp"))
    """Each node its own temp dir: two nodes sharing one would share one runtime-env cache, and
    the worker's agent would delete the job's working directory under the running driver."""

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_node(self, name: str, args: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        self.procs.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--block",
                    "--node-ip-address",
                    "127.0.0.1",
                    "--num-cpus",
                    "1",
                    "--disable-usage-stats",
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=ray_env(),
                start_new_session=True,
            )
        )

    def job_status(self, submission_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED, from the dashboard's job API."""
        url = f"{self.dashboard}/api/jobs/{submission_id}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(json.loads(resp.read())["status"])

    def alive_nodes(self) -> int:
        with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes", timeout=5) as resp:
            text = resp.read().decode()
        return text.count('"ALIVE"')

    def wait_until_ready(self, nodes: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a `ray start` exited with {p.returncode}: {self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/jobs/", timeout=5) as resp:
                    json.loads(resp.read())
                if self.alive_nodes() >= nodes:
                    return
            except Exception as err:  # not up yet
                last = err
            time.sleep(1)
        raise TimeoutError(f"cluster not ready after {timeout_s} s ({last}): {self.logs()}")

    def logs(self) -> str:
        return " | ".join(
            f"{p.name}: {p.read_text(errors='replace')[-1500:]}" for p in self.log_dir.glob("*.log")
        )

    def stop(self) -> None:
        for p in self.procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(p, signal.SIGKILL)
            p.wait(timeout=10)
        for temp_dir in (self.temp_dir, self.worker_temp_dir):
            for pid in _pids_naming(temp_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(temp_dir, ignore_errors=True)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)  # start_new_session: the group id is the process id


def _pids_naming(text: str) -> list[int]:
    """Processes of this cluster that left its process groups (their command line names the
    cluster's unique temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def start_two_node_cluster(log_dir: Path, timeout_s: float = 180) -> LocalCluster:
    """Head (1 CPU) plus one worker node (1 CPU), every port chosen free, dashboard on
    127.0.0.1. The temp dir is short: Ray's unix socket paths must stay under 108 bytes."""
    cluster = LocalCluster(
        gcs_port=free_port(),
        dashboard_port=free_port(),
        temp_dir=tempfile.mkdtemp(prefix="tdray", dir="/tmp"),
        log_dir=log_dir,
    )
    try:
        cluster.start_node(
            "head",
            [
                "--head",
                "--port",
                str(cluster.gcs_port),
                "--dashboard-port",
                str(cluster.dashboard_port),
                "--dashboard-host",
                "127.0.0.1",
                "--include-dashboard",
                "true",
                "--ray-client-server-port",
                str(free_port()),
                "--dashboard-agent-listen-port",
                str(free_port()),
                "--temp-dir",
                cluster.temp_dir,
            ],
        )
        cluster.wait_until_ready(nodes=1, timeout_s=timeout_s)
        cluster.start_node(
            "worker",
            [
                "--address",
                f"127.0.0.1:{cluster.gcs_port}",
                "--dashboard-agent-listen-port",
                str(free_port()),
                "--temp-dir",
                cluster.worker_temp_dir,
            ],
        )
        cluster.wait_until_ready(nodes=2, timeout_s=timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster
