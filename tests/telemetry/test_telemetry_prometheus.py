"""A real Prometheus scrapes the tdpdm exporter on loopback and answers queries about it: the
ledger's figures, every query of the shipped dashboard, and the chart's alert rules."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_support import PrometheusServer
from tdpdm_test_support import helm_env, helm_path

from tdpdm.telemetry import PrometheusTelemetry

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "helm" / "tdpdm" / "files" / "dashboards" / "tdpdm-overview.json"
# Grafana's variables, replaced by what Grafana would send when "All" is selected.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$dataset": ".*", "$run_id": ".*"}


@pytest.fixture
def exporter() -> Iterator[tuple[PrometheusTelemetry, str]]:
    t = PrometheusTelemetry()
    port = t.serve(0, addr="127.0.0.1")
    try:
        yield t, f"127.0.0.1:{port}"
    finally:
        t.close()


def scalar(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def equals(expected: float) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda result: len(result) == 1 and float(result[0]["value"][1]) == expected


def test_prometheus_scrapes_epsilon_spent(
    exporter: tuple[PrometheusTelemetry, str],
    start_prometheus: Callable[..., PrometheusServer],
) -> None:
    t, target = exporter
    t.privacy("mnist", 1.25, 10.0, 1e-5)
    t.job("run-1", "running")
    t.step("stage1", 50, 0.5, 1000.0)
    server = start_prometheus([target])

    result = server.wait_for("tdpdm_privacy_epsilon_spent", timeout=30)
    (series,) = result
    assert series["metric"]["__name__"] == "tdpdm_privacy_epsilon_spent"
    assert series["metric"]["dataset"] == "mnist"
    assert series["metric"]["job"] == "tdpdm" and series["metric"]["instance"] == target
    assert float(series["value"][1]) == 1.25

    # A new ledger figure reaches Prometheus on the next scrape.
    t.privacy("mnist", 2.5, 10.0, 1e-5)
    server.wait_for('tdpdm_privacy_epsilon_spent{dataset="mnist"}', equals(2.5), timeout=15)
    assert scalar(server.query("tdpdm_privacy_budget_remaining_epsilon")) == 7.5
    assert scalar(server.query('tdpdm_job_status{status="running"}')) == 1
    assert scalar(server.query("tdpdm_training_steps_total")) == 50


def dashboard_queries() -> dict[str, str]:
    """Every PromQL query of the shipped dashboard, by panel (or variable), variables filled in.
    A `label_values(selector, label)` variable is checked by its selector."""
    board = json.loads(DASHBOARD.read_text())
    queries = {
        f"{panel['title']} [{target['refId']}]": target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
    }
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"]
            assert query.startswith("label_values("), query
            queries[f"${var['name']}"] = query[len("label_values(") :].rsplit(",", 1)[0]
    for name, expr in queries.items():
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        queries[name] = expr
    return queries


def test_every_dashboard_query_shows_the_exporters_data(
    exporter: tuple[PrometheusTelemetry, str],
    start_prometheus: Callable[..., PrometheusServer],
) -> None:
    """Once the driver has made each kind of report the pipeline makes (the loss with the
    custodian's opt-in), every panel and variable of the dashboard has data. A query of a series
    nothing emits (a misspelt name, the removed ray_tdpdm_* ones) comes back empty and fails."""
    t, target = exporter
    t.privacy("mnist", 2.0, 10.0, 1e-5)
    t.job("run-d", "running")
    t.stage("run-d", "encoder", 0.5)
    t.step("encoder", 10, 0.75, 100.0)
    server = start_prometheus([target])
    # rate() needs two scrapes of the counter inside its window.
    server.wait_for(
        "count_over_time(tdpdm_training_steps_total[1m]) >= 2", lambda r: len(r) == 1, timeout=30
    )
    queries = dashboard_queries()
    assert len(queries) >= 12
    empty = {name: expr for name, expr in queries.items() if not server.query(expr)}
    assert empty == {}
    assert server.query('max by (dataset) (ray_tdpdm_privacy_epsilon_spent{dataset=~".*"})') == []


def render_alert_rules(tmp_path: Path) -> Path:
    """The chart's PrometheusRule, rendered by the real helm, as a plain rules file."""
    proc = subprocess.run(
        [
            helm_path(),
            "template",
            "tdpdm",
            str(REPO / "helm" / "tdpdm"),
            "--set",
            "monitoring.prometheusRule.enabled=true",
            "--set",
            "monitoring.prometheusRule.stalledMinutes=1",
            # The chart requires the ledger's shared volume; the rules do not depend on it.
            "--set",
            "sharedStorage.existingClaim=tdpdm-shared",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=helm_env(tmp_path / "helm"),
    )
    assert proc.returncode == 0, proc.stderr
    (rule,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "PrometheusRule"]
    path = tmp_path / "tdpdm-rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def test_alert_rules_fire_on_live_metrics(
    exporter: tuple[PrometheusTelemetry, str],
    start_prometheus: Callable[..., PrometheusServer],
    tmp_path: Path,
) -> None:
    """Exporter -> Prometheus -> the chart's alert rules: budget and failure alerts fire."""
    t, target = exporter
    t.privacy("mnist", 9.5, 10.0, 1e-5)
    t.privacy("fashion-mnist", 1.0, 10.0, 1e-5)
    t.job("run-ok", "running")
    t.job("run-bad", "failed")
    server = start_prometheus([target], rule_files=[render_alert_rules(tmp_path)])

    firing = server.wait_for(
        'ALERTS{alertstate="firing", alertname=~"TdpdmPrivacyBudgetNearlySpent|TdpdmJobFailed"}',
        lambda r: len(r) == 2,
        timeout=30,
    )
    by_alert = {r["metric"]["alertname"]: r["metric"] for r in firing}
    assert by_alert["TdpdmPrivacyBudgetNearlySpent"]["dataset"] == "mnist"
    assert by_alert["TdpdmJobFailed"]["run_id"] == "run-bad"
    assert server.query('ALERTS{alertname="TdpdmPrivacyBudgetExhausted"}') == []
