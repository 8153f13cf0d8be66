"""Start and query a real Prometheus (Debian's package) on loopback for tests.

Used by the `start_prometheus` fixture in conftest.py; kept in a module of its own so test
files can import the `PrometheusServer` type without importing conftest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from tdpdm_test_support import free_port, require_tool

STARTUP_TIMEOUT_S = 30.0


def require_binary(name: str) -> str:
    """Path of a binary from Debian's prometheus package; skip locally, fail under CI."""
    return require_tool(shutil.which(name), name, "apt-get install prometheus")


@dataclass
class PrometheusServer:
    """Handle on a running test Prometheus."""

    url: str
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    targets: list[str] = field(default_factory=list)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the result vector (`metric` labels and `value` pairs)."""
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll `expr` until `predicate(result)` holds; fail with the last result on timeout."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited ({self.process.returncode}):\n{self.log()}")
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.25)
        targets = self.api("/api/v1/targets")
        pytest.fail(
            f"timed out after {timeout}s waiting on {expr!r}; last result {result};\n"
            f"targets: {json.dumps(targets)[:2000]}\nlog:\n{self.log()}"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_server(
    workdir: Path,
    targets: Sequence[str],
    rule_files: Sequence[Path],
    scrape_interval: str,
) -> PrometheusServer:
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": "tdpdm", "static_configs": [{"targets": list(targets)}]},
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "prometheus.log"
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between probe and bind: retry
        port = free_port()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=info",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
            )
        server = PrometheusServer(
            f"http://127.0.0.1:{port}", workdir, process, log_path, list(targets)
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return server
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        last_error = server.log()
        server.stop()
    pytest.fail(f"prometheus did not become ready:\n{last_error}")
