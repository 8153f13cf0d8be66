"""A real Prometheus server for tests: Debian's `prometheus`, on loopback, torn down afterwards.

`start_prometheus(targets=[...])` writes a throw-away config (1 s scrape and rule evaluation),
starts the server on a free 127.0.0.1 port with its own storage directory, waits until it is
ready and returns a `PrometheusServer` (prometheus_support.py) with `query()` and `wait_for()`.
Every server a test started is stopped in teardown, whether the test passed or not. Under CI a
missing binary fails the test instead of skipping it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_support import PrometheusServer, start_server


@pytest.fixture
def start_prometheus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., PrometheusServer]]:
    """Factory fixture: `start_prometheus(targets, rule_files=(), scrape_interval="1s")`."""
    servers: list[PrometheusServer] = []

    def start(
        targets: Sequence[str],
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
    ) -> PrometheusServer:
        workdir = tmp_path_factory.mktemp("prometheus")
        server = start_server(workdir, targets, rule_files, scrape_interval)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
