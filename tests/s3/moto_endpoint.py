"""A real S3 endpoint on loopback: moto's HTTP server in its own process.

Run as a script it serves moto on 127.0.0.1 at a free port and prints `PORT <n>` once it
listens. One difference from `moto_server` is deliberate: moto checks `If-Match`/`If-None-Match`
and then stores the object in two separate steps, and its server answers on several threads, so
two racing conditional PUTs can both pass the check. AWS S3, MinIO and Ceph make check-and-write
one atomic step; to behave like them, mutating requests (PUT, POST, DELETE) are served one at a
time here. Reads stay concurrent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Distinctive fake credentials: tests grep every output for them.
FAKE_ACCESS_KEY = "AKIATDPDMFAKE7Q2X9Z1"
FAKE_SECRET_KEY = "tdpdmFakeSecret/Zq8w3Lk2Pm9Xr4Tn6Vb1Hc5Jd7Kx0"
FAKE_SESSION_TOKEN = "tdpdmFakeSessionToken0Wq9Er8Ty7Ui6Op5As4Df3"
SECRETS = (FAKE_ACCESS_KEY, FAKE_SECRET_KEY, FAKE_SESSION_TOKEN)

_MUTATING = frozenset({"PUT", "POST", "DELETE"})


class SerialWrites:
    """WSGI middleware: one mutating request at a time (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") not in _MUTATING:
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))


def serve() -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = SerialWrites(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    os.environ["MOTO_PORT"] = str(server.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"PORT {server.port}", flush=True)
    server.serve_forever()


@dataclass
class MotoEndpoint:
    """A running moto server process and the AWS environment that points clients at it."""

    process: subprocess.Popen[str]
    url: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> Any:
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=FAKE_ACCESS_KEY,
            aws_secret_access_key=FAKE_SECRET_KEY,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


def aws_env(url: str, config_dir: Path) -> dict[str, str]:
    """AWS settings for the endpoint, isolated from any real profile or credentials file."""
    empty = config_dir / "aws-empty"
    empty.write_text("")
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
        "AWS_SESSION_TOKEN": FAKE_SESSION_TOKEN,
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def start_moto(config_dir: Path, timeout_s: float = 60.0) -> MotoEndpoint:
    """Start the server process and wait until it listens; stop it if anything goes wrong."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [sys.executable, __file__],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    endpoint = MotoEndpoint(process, "")
    try:
        deadline = time.monotonic() + timeout_s
        line = ""
        while not line.startswith("PORT "):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start (exit code {process.poll()})")
            line = process.stdout.readline() if process.stdout else ""
        endpoint.url = f"http://127.0.0.1:{int(line.split()[1])}"
        endpoint.env = aws_env(endpoint.url, config_dir)
        return endpoint
    except BaseException:
        endpoint.stop()
        raise


if __name__ == "__main__":
    serve()
