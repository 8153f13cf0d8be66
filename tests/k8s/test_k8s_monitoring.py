"""Alert rules and dashboard: real promtool checks; every queried metric is one tdpdm emits."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_support import CHART, VALUE_SETS, Doc, load_docs, promtool_path, render

from tdpdm.telemetry import METRICS, SPECS, PrometheusTelemetry, Telemetry

DASHBOARD = CHART / "files" / "dashboards" / "tdpdm-overview.json"
# Grafana's variables, replaced by values Prometheus accepts, so promtool can parse the queries.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$dataset": ".*", "$run_id": ".*"}
# PromQL words that are not metric names (operators, modifiers, literals).
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip
IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")


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
    """Every metric name an expression reads. Selecting by `__name__` is refused: a regex over
    names cannot be checked against what is emitted (it once hid the ray_tdpdm_* series that
    nothing emitted). Grafana's `label_values(selector, label)` counts as its selector."""
    assert "__name__" not in expr, f"select metrics by name, not by __name__: {expr}"
    if expr.startswith("label_values("):
        expr = expr[len("label_values(") :].rsplit(",", 1)[0]
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows
    # Grouping clauses name labels; dropped with their keyword, `max by (x) (m)` reads `max (m)`.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in IDENTIFIER.finditer(text):
        if m.group(0) in PROMQL_WORDS or text[m.end() :].lstrip().startswith("("):
            continue  # an operator or a function call
        names.add(m.group(0))
    return names


@cache
def emitted_series() -> frozenset[str]:
    """Series names the driver's exporter (`PrometheusTelemetry`, the product's only metrics
    back end) serves once every kind of report has been made, read from its registry. The loss
    is given, as the pipeline does when the custodian opts in (custodian_losses).
    tests/telemetry checks that the pipeline makes every kind of report."""
    t = PrometheusTelemetry()
    one_of_each = {
        "privacy": lambda: t.privacy("d", 1.0, 10.0, 1e-5),
        "stage": lambda: t.stage("r", "s", 0.5),
        "step": lambda: t.step("s", 1, 0.5, 10.0),
        "job": lambda: t.job("r", "running"),
    }
    reports = {n for n, v in vars(Telemetry).items() if callable(v) and not n.startswith("_")}
    assert set(one_of_each) == reports, "a new kind of report: add it here"
    for report in one_of_each.values():
        report()
    families = list(t.registry.collect())
    # Nothing is registered that no report sets: a registered name is an emitted one.
    assert [f.name for f in families if not f.samples] == []
    return frozenset(s.name for f in families for s in f.samples)


def write_rules(path: Path, rule: Doc) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool_path(), *args], capture_output=True, text=True, timeout=120)


# ---- metric names ----


def test_the_catalogue_is_what_the_exporter_emits() -> None:
    emitted = emitted_series()
    # prometheus_client adds <counter>_created; otherwise the names are exactly the catalogue's.
    created = {s.name.removesuffix("_total") + "_created" for s in SPECS if s.kind == "counter"}
    assert emitted == set(METRICS) | created


def test_alerts_query_only_emitted_metrics() -> None:
    exprs = alert_exprs()
    assert len(exprs) == 4
    for expr in exprs:
        used = metrics_in(expr)
        assert used, expr
        assert used <= emitted_series(), (expr, used - emitted_series())


def test_dashboard_queries_only_emitted_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 12
    used: set[str] = set()
    for expr in exprs:
        names = metrics_in(expr)
        assert names, f"query reads no metric: {expr}"
        assert names <= emitted_series(), (expr, names - emitted_series())
        used |= names
    # And the dashboard shows every metric tdpdm exports.
    assert used == set(METRICS)


def test_the_training_loss_panel_says_it_needs_the_opt_in() -> None:
    """tdpdm_training_loss is set only when the custodian opts in (custodian_losses; see
    tests/telemetry): the panel reading it must say so, and no other panel may read it."""
    readers = [
        p for p in dashboard()["panels"] if "tdpdm_training_loss" in json.dumps(p.get("targets"))
    ]
    assert [p["title"] for p in readers] == [
        "Training loss (only if the custodian opted in: custodian_losses)"
    ]
    assert all("tdpdm_training_loss" not in metrics_in(e) for e in alert_exprs())


def test_metric_name_check_can_fail() -> None:
    assert metrics_in('max(tdpdm_privacy_epsilon_spend{dataset=~"$dataset"})') == {
        "tdpdm_privacy_epsilon_spend"
    }
    assert "tdpdm_privacy_epsilon_spend" not in emitted_series()
    # Ray's metrics agent would have prefixed ray_: nothing emits those.
    assert metrics_in("sum by (stage) (rate(ray_tdpdm_training_steps_total[5m]))") == {
        "ray_tdpdm_training_steps_total"
    }
    assert not {"ray_tdpdm_training_steps_total"} <= emitted_series()
    # Any metric name counts, not only tdpdm_ ones; functions, keywords and labels do not.
    assert metrics_in(
        'time() - max by (run_id) (last_over_time(up{job="x"}[5m])) > 60 '
        "and on (run_id) foo_bar offset 5m == bool 1"
    ) == {"up", "foo_bar"}
    assert metrics_in("label_values(tdpdm_job_status, run_id)") == {"tdpdm_job_status"}
    with pytest.raises(AssertionError, match="__name__"):
        metrics_in('{__name__=~"(ray_)?tdpdm_privacy_epsilon_spent"}')


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
    """Feed the driver's series and check which alerts fire when."""
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
                    # Another driver, scraped from another pod: fashion-mnist is exhausted.
                    {
                        "series": "tdpdm_privacy_epsilon_spent"
                        '{dataset="fashion-mnist",pod="tdpdm-head-b"}',
                        "values": "10x23",
                    },
                    {
                        "series": "tdpdm_privacy_budget_epsilon"
                        '{dataset="fashion-mnist",pod="tdpdm-head-b"}',
                        "values": "10x23",
                    },
                    {
                        "series": "tdpdm_privacy_budget_remaining_epsilon"
                        '{dataset="fashion-mnist",pod="tdpdm-head-b"}',
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
                        "series": "tdpdm_last_progress_timestamp_seconds"
                        '{run_id="r2",pod="tdpdm-head-b"}',
                        "values": "0 60 120",
                    },
                    {
                        "series": "tdpdm_job_status"
                        '{run_id="r2",status="running",pod="tdpdm-head-b"}',
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
