"""Alert rules and dashboard: real promtool checks; every queried metric is one tdpdm exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_support import CHART, VALUE_SETS, Doc, load_docs, promtool_path, render

from tdpdm.telemetry import METRICS, SPECS

DASHBOARD = CHART / "files" / "dashboards" / "tdpdm-overview.json"
NAME_MATCHER = re.compile(r'__name__\s*=~\s*"([^"]*)"')
TDPDM_TOKEN = re.compile(r"\b(?:ray_)?(tdpdm_[A-Za-z0-9_]+)")
# Grafana's variables, replaced by values Prometheus accepts, so promtool can parse the queries.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$dataset": ".*", "$run_id": ".*"}


def prometheus_rule(value_set: str = "gpu") -> Doc:
    (rule,) = [d for d in load_docs(render(value_set)) if d["kind"] == "PrometheusRule"]
    return rule


def alert_exprs() -> list[str]:
    return [r["expr"] for g in prometheus_rule()["spec"]["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


def metrics_in(expr: str) -> set[str]:
    """Metric names an expression reads, by bare name or by a `__name__=~` matcher."""
    names = set()
    for matcher in NAME_MATCHER.findall(expr):
        m = re.fullmatch(r"\(ray_\)\?(tdpdm_[A-Za-z0-9_]+)", matcher)
        assert m, f"unexpected __name__ matcher {matcher!r}: use (ray_)?tdpdm_<name>"
        names.add(m.group(1))
    names |= set(TDPDM_TOKEN.findall(NAME_MATCHER.sub("", expr)))
    return names


def write_rules(path: Path, rule: Doc) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool_path(), *args], capture_output=True, text=True, timeout=120)


# ---- metric names ----


def test_alerts_query_only_exported_metrics() -> None:
    exprs = alert_exprs()
    assert len(exprs) == 4
    for expr in exprs:
        used = metrics_in(expr)
        assert used, expr
        assert used <= set(METRICS), used - set(METRICS)


def test_dashboard_queries_only_exported_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 12
    used: set[str] = set()
    for expr in exprs:
        names = metrics_in(expr)
        assert names, f"query reads no tdpdm metric: {expr}"
        assert names <= set(METRICS), names - set(METRICS)
        used |= names
    # And the dashboard shows everything the code exports.
    assert used == set(METRICS)


def test_metric_name_check_can_fail() -> None:
    assert metrics_in('max({__name__=~"(ray_)?tdpdm_privacy_epsilon_spend"})') == {
        "tdpdm_privacy_epsilon_spend"
    }
    assert "tdpdm_privacy_epsilon_spend" not in METRICS
    with pytest.raises(AssertionError, match="unexpected __name__ matcher"):
        metrics_in('{__name__=~"tdpdm_.*"}')


def test_counters_are_queried_with_rate() -> None:
    counters = {s.name for s in SPECS if s.kind == "counter"}
    for expr in dashboard_exprs() + alert_exprs():
        if metrics_in(expr) & counters:
            assert "rate(" in expr or "increase(" in expr, expr


# ---- promtool ----


@pytest.mark.parametrize("value_set", [v for v in VALUE_SETS if v in ("gpu", "rayjob")])
def test_promtool_accepts_the_alert_rules(value_set: str, tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules.yml", prometheus_rule(value_set))
    proc = promtool("check", "rules", str(rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Dashboard queries, as recording rules, go through Prometheus's own PromQL parser."""
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        if expr.startswith("label_values("):  # Grafana function, not PromQL: check its selector
            expr = expr[len("label_values(") :].rsplit(",", 1)[0]
        rules.append({"record": f"tdpdm:dashboard_query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_fire_the_alerts(tmp_path: Path) -> None:
    """Feed series (both tdpdm_ and ray_tdpdm_ spellings) and check which alerts fire when."""
    write_rules(tmp_path / "rules.yml", prometheus_rule("gpu"))
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # Driver exporter: mnist passes 90 % spent at minute 3.
                    {
                        "series": 'tdpdm_privacy_epsilon_spent{dataset="mnist"}',
                        "values": "5 8 8.5 9.5x20",
                    },
                    {"series": 'tdpdm_privacy_budget_epsilon{dataset="mnist"}', "values": "10x23"},
                    {
                        "series": 'tdpdm_privacy_budget_remaining_epsilon{dataset="mnist"}',
                        "values": "5 2 1.5 0.5x20",
                    },
                    # Ray worker series (ray_ prefix, extra labels): fashion-mnist is exhausted.
                    {
                        "series": "ray_tdpdm_privacy_epsilon_spent"
                        '{dataset="fashion-mnist",WorkerId="w1"}',
                        "values": "10x23",
                    },
                    {
                        "series": "ray_tdpdm_privacy_budget_epsilon"
                        '{dataset="fashion-mnist",WorkerId="w1"}',
                        "values": "10x23",
                    },
                    {
                        "series": "ray_tdpdm_privacy_budget_remaining_epsilon"
                        '{dataset="fashion-mnist",WorkerId="w1"}',
                        "values": "0x23",
                    },
                    # r1 progresses for 2 minutes, then hangs while still "running".
                    {
                        "series": 'tdpdm_last_progress_timestamp_seconds{run_id="r1"}',
                        "values": "0 60 120x21",
                    },
                    {"series": 'tdpdm_job_status{run_id="r1",status="running"}', "values": "1x23"},
                    # r2's driver dies at minute 2: its series vanish while it was running.
                    {
                        "series": 'ray_tdpdm_last_progress_timestamp_seconds{run_id="r2"}',
                        "values": "0 60 120",
                    },
                    {
                        "series": 'ray_tdpdm_job_status{run_id="r2",status="running"}',
                        "values": "1 1 1",
                    },
                    # r3 keeps progressing, then succeeds: never stalled, never failed.
                    {
                        "series": 'tdpdm_last_progress_timestamp_seconds{run_id="r3"}',
                        "values": "0+60x23",
                    },
                    {
                        "series": 'tdpdm_job_status{run_id="r3",status="running"}',
                        "values": "1x10 0x12",
                    },
                    {
                        "series": 'tdpdm_job_status{run_id="r3",status="succeeded"}',
                        "values": "0x10 1x12",
                    },
                    # r4 fails at minute 4.
                    {
                        "series": 'tdpdm_job_status{run_id="r4",status="failed"}',
                        "values": "0 0 0 0 1x19",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "1m",
                        "alertname": "TdpdmPrivacyBudgetNearlySpent",
                        "exp_alerts": [expected("fashion-mnist", "warning", 1.0)],
                    },
                    {
                        "eval_time": "4m",
                        "alertname": "TdpdmPrivacyBudgetNearlySpent",
                        "exp_alerts": [
                            expected("fashion-mnist", "warning", 1.0),
                            expected("mnist", "warning", 0.95),
                        ],
                    },
                    {
                        "eval_time": "4m",
                        "alertname": "TdpdmPrivacyBudgetExhausted",
                        "exp_alerts": [expected("fashion-mnist", "critical", None)],
                    },
                    {"eval_time": "10m", "alertname": "TdpdmJobStalled", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": "TdpdmJobStalled",
                        "exp_alerts": [stalled("r1", "18m 0s"), stalled("r2", "18m 0s")],
                    },
                    {"eval_time": "3m", "alertname": "TdpdmJobFailed", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "TdpdmJobFailed",
                        "exp_alerts": [failed("r4")],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def _annotations(alert: str, **values: str) -> dict[str, str]:
    """The rendered rule's annotations with Prometheus's templating applied by hand."""
    for group in prometheus_rule("gpu")["spec"]["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                out = {}
                for key, text in rule["annotations"].items():
                    for name, value in values.items():
                        text = re.sub(r"\{\{ \$" + name + r"[^}]*\}\}", value, text)
                    out[key] = text
                return out
    raise KeyError(alert)


def expected(dataset: str, severity: str, ratio: float | None) -> dict[str, Any]:
    alert = "TdpdmPrivacyBudgetNearlySpent" if ratio is not None else "TdpdmPrivacyBudgetExhausted"
    values = {"labels.dataset": dataset}
    if ratio is not None:
        values["value"] = f"{ratio * 100:g}%"
    return {
        "exp_labels": {"severity": severity, "dataset": dataset},
        "exp_annotations": _annotations(alert, **values),
    }


def stalled(run_id: str, duration: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": "warning", "run_id": run_id},
        "exp_annotations": _annotations(
            "TdpdmJobStalled", **{"labels.run_id": run_id, "value": duration}
        ),
    }


def failed(run_id: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": "critical", "run_id": run_id},
        "exp_annotations": _annotations("TdpdmJobFailed", **{"labels.run_id": run_id}),
    }


# ---- the dashboard as shipped ----


@pytest.mark.parametrize(("value_set", "namespace"), [("default", "tdpdm"), ("gpu", "monitoring")])
def test_dashboard_configmap_carries_the_json(value_set: str, namespace: str) -> None:
    (cm,) = [
        d
        for d in load_docs(render(value_set))
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == namespace
    assert json.loads(cm["data"]["tdpdm-overview.json"]) == dashboard()


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["uid"] == "tdpdm-overview"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["refId"] for t in panel["targets"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
