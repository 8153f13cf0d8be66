"""The telemetry facade: no-op default, the Prometheus exporter over HTTP, and the pipeline's
calls into it (every kind of report is made; the loss only with the custodian's opt-in)."""

from __future__ import annotations

import ast
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tdpdm.telemetry as telemetry
from tdpdm.telemetry import (
    JOB_STATUSES,
    METRICS,
    SPECS,
    PrometheusTelemetry,
    Telemetry,
    get_telemetry,
    set_telemetry,
)

PACKAGE = Path(__file__).resolve().parents[2] / "tdpdm"

EXPECTED_LABELS = {
    "tdpdm_privacy_epsilon_spent": ("dataset",),
    "tdpdm_privacy_budget_epsilon": ("dataset",),
    "tdpdm_privacy_budget_remaining_epsilon": ("dataset",),
    "tdpdm_privacy_delta": ("dataset",),
    "tdpdm_stage_progress_ratio": ("run_id", "stage"),
    "tdpdm_last_progress_timestamp_seconds": ("run_id",),
    "tdpdm_training_steps_total": ("stage",),
    "tdpdm_training_loss": ("stage",),
    "tdpdm_training_samples_per_second": ("stage",),
    "tdpdm_job_status": ("run_id", "status"),
}


@pytest.fixture(autouse=True)
def restore_global() -> Iterator[None]:
    before = get_telemetry()
    yield
    set_telemetry(before)


def samples(t: PrometheusTelemetry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in t.registry.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(t: PrometheusTelemetry, name: str, **labels: str) -> float:
    return samples(t)[(name, tuple(sorted(labels.items())))]


def test_catalogue_is_the_agreed_interface() -> None:
    assert {s.name: s.labels for s in SPECS} == EXPECTED_LABELS
    assert set(METRICS) == set(EXPECTED_LABELS)
    assert all(len(help_text) > 10 for help_text in METRICS.values())
    assert [s.name for s in SPECS if s.kind == "counter"] == ["tdpdm_training_steps_total"]
    assert set(telemetry.__all__) >= {
        "Telemetry",
        "PrometheusTelemetry",
        "get_telemetry",
        "set_telemetry",
        "METRICS",
    }


def test_default_is_a_silent_no_op() -> None:
    t = get_telemetry()
    assert type(t) is Telemetry
    t.privacy("mnist", 1.0, 10.0, 1e-5)
    t.stage("r", "stage1", 0.5)
    t.step("stage1", 10, 0.1, 100.0)
    t.step("stage1", 10, None, 100.0)
    t.job("r", "running")


def test_set_telemetry_is_process_wide() -> None:
    t = PrometheusTelemetry()
    set_telemetry(t)
    assert get_telemetry() is t
    with pytest.raises(TypeError):
        set_telemetry("not telemetry")  # type: ignore[arg-type]


def test_privacy_gauges() -> None:
    t = PrometheusTelemetry()
    t.privacy("mnist", 2.5, 10.0, 1e-5)
    t.privacy("fashion-mnist", 12.0, 10.0, 1e-6)  # overshoot from float noise: floored at 0
    assert value(t, "tdpdm_privacy_epsilon_spent", dataset="mnist") == 2.5
    assert value(t, "tdpdm_privacy_budget_epsilon", dataset="mnist") == 10.0
    assert value(t, "tdpdm_privacy_budget_remaining_epsilon", dataset="mnist") == 7.5
    assert value(t, "tdpdm_privacy_delta", dataset="mnist") == 1e-5
    assert value(t, "tdpdm_privacy_budget_remaining_epsilon", dataset="fashion-mnist") == 0.0


def test_stage_progress_and_last_progress_timestamp() -> None:
    clock = iter([1000.0, 2000.0, 3000.0, 4000.0])
    t = PrometheusTelemetry(clock=lambda: next(clock))
    t.stage("run-1", "stage1", 0.25)
    assert value(t, "tdpdm_stage_progress_ratio", run_id="run-1", stage="stage1") == 0.25
    assert value(t, "tdpdm_last_progress_timestamp_seconds", run_id="run-1") == 1000.0
    t.stage("run-1", "stage1", 1.0000001)  # clamped: never above 100 %
    assert value(t, "tdpdm_stage_progress_ratio", run_id="run-1", stage="stage1") == 1.0
    # Steps are progress too: they refresh the timestamp of the last run seen.
    t.step("stage1", 5, 0.3, 120.0)
    assert value(t, "tdpdm_last_progress_timestamp_seconds", run_id="run-1") == 3000.0
    t.step("stage1", 0, 0.3, 0.0)  # no steps: no progress
    assert value(t, "tdpdm_last_progress_timestamp_seconds", run_id="run-1") == 3000.0


def test_steps_are_a_counter_of_increments() -> None:
    t = PrometheusTelemetry()
    t.step("stage1", 10, 0.5, 100.0)
    t.step("stage1", 15, 0.4, 150.0)
    t.step("stage2", 3, 1.2, 50.0)
    assert value(t, "tdpdm_training_steps_total", stage="stage1") == 25
    assert value(t, "tdpdm_training_steps_total", stage="stage2") == 3
    assert value(t, "tdpdm_training_loss", stage="stage1") == 0.4
    assert value(t, "tdpdm_training_samples_per_second", stage="stage1") == 150.0
    with pytest.raises(ValueError, match="negative"):
        t.step("stage1", -1, 0.4, 1.0)


def test_loss_is_exported_only_when_given() -> None:
    """The pipeline passes loss=None unless the custodian opted in (custodian_losses): steps and
    throughput are still exported, and no loss series appears at all (not even a 0)."""
    t = PrometheusTelemetry()
    t.step("encoder", 10, None, 100.0)
    assert value(t, "tdpdm_training_steps_total", stage="encoder") == 10
    assert value(t, "tdpdm_training_samples_per_second", stage="encoder") == 100.0
    assert [k for k in samples(t) if k[0] == "tdpdm_training_loss"] == []
    t.step("encoder", 5, 0.25, 90.0)  # opted in
    assert value(t, "tdpdm_training_loss", stage="encoder") == 0.25
    t.step("encoder", 5, None, 80.0)  # None never overwrites or clears with a made-up value
    assert value(t, "tdpdm_training_loss", stage="encoder") == 0.25
    assert value(t, "tdpdm_training_steps_total", stage="encoder") == 20


def test_exclusive_job_status() -> None:
    t = PrometheusTelemetry()
    t.job("r1", "running")
    t.job("r1", "failed")
    states = {s: value(t, "tdpdm_job_status", run_id="r1", status=s) for s in JOB_STATUSES}
    assert states == {"pending": 0, "running": 0, "succeeded": 0, "failed": 1}
    t.job("r1", "cancelled")  # an unforeseen status still shows alone
    assert value(t, "tdpdm_job_status", run_id="r1", status="cancelled") == 1
    assert value(t, "tdpdm_job_status", run_id="r1", status="failed") == 0


def test_exporter_serves_the_values_over_http() -> None:
    t = PrometheusTelemetry()
    port = t.serve(0, addr="127.0.0.1")
    try:
        assert port > 0 and t.port == port
        t.privacy("mnist", 3.75, 10.0, 1e-5)
        t.stage("run-7", "stage2", 0.5)
        t.step("stage2", 42, 0.125, 2048.0)
        t.job("run-7", "running")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        got = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        assert got[("tdpdm_privacy_epsilon_spent", (("dataset", "mnist"),))] == 3.75
        assert got[("tdpdm_privacy_budget_remaining_epsilon", (("dataset", "mnist"),))] == 6.25
        progress = ("tdpdm_stage_progress_ratio", (("run_id", "run-7"), ("stage", "stage2")))
        assert got[progress] == 0.5
        assert got[("tdpdm_training_steps_total", (("stage", "stage2"),))] == 42
        assert got[("tdpdm_job_status", (("run_id", "run-7"), ("status", "running")))] == 1
        # Every catalogued metric is announced, under exactly its catalogue name.
        families = {f.name for f in text_string_to_metric_families(body)}
        assert {m.removesuffix("_total") for m in METRICS} <= families
        # Only tdpdm metrics: the private registry keeps process/GC collectors out.
        assert all(name.startswith("tdpdm_") for name in families)
        with pytest.raises(RuntimeError):
            t.serve(0, addr="127.0.0.1")
    finally:
        t.close()
    assert t.port is None


def test_two_exporters_do_not_collide() -> None:
    a, b = PrometheusTelemetry(), PrometheusTelemetry()
    a.privacy("mnist", 1.0, 10.0, 1e-5)
    b.privacy("mnist", 2.0, 10.0, 1e-5)
    assert value(a, "tdpdm_privacy_epsilon_spent", dataset="mnist") == 1.0
    assert value(b, "tdpdm_privacy_epsilon_spent", dataset="mnist") == 2.0


def test_telemetry_imports_without_ray() -> None:
    """`import tdpdm.telemetry` must not import ray (ray is an optional extra), nor need it."""
    import subprocess

    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'ray' or name.startswith('ray.'):\n"
        "        raise ImportError('ray blocked')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import tdpdm.telemetry as t\n"
        "t.PrometheusTelemetry().privacy('mnist', 1, 2, 1e-5)\n"
        "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ---- what the pipeline really reports ----


def reports() -> set[str]:
    """The kinds of report: `Telemetry`'s public methods."""
    return {name for name, v in vars(Telemetry).items() if callable(v) and not name.startswith("_")}


def telemetry_calls(root: Path) -> dict[str, list[str]]:
    """Calls `<...>telemetry.<report>(...)` in product code outside tdpdm/telemetry, by report:
    `ctx.telemetry.step(...)`, `telemetry.privacy(...)`, `get_telemetry().job(...)`."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if "telemetry" in path.relative_to(root).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = ast.unparse(node.func.value)
            if receiver.endswith(("telemetry", "get_telemetry()")):
                where = f"{path.relative_to(root)}:{node.lineno}"
                found.setdefault(node.func.attr, []).append(where)
    return found


def test_the_pipeline_makes_every_kind_of_report() -> None:
    """A metric written only by a report nothing makes would be registered, shown on the
    dashboard and never emitted (as tdpdm_tune_trials and the Ray back end were): every kind of
    report has a caller in the product, and nothing calls a report that does not exist."""
    assert reports() == {"privacy", "stage", "step", "job"}
    calls = telemetry_calls(PACKAGE)
    # Besides the reports, only the CLI's control of the exporter (serve/close) is called.
    assert set(calls) - {"serve", "close"} == reports(), calls


def test_report_caller_scan_can_fail(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text(
        "def f(ctx, telemetry):\n"
        "    ctx.telemetry.step('s', 1, None, 1.0)\n"
        "    telemetry.privacy('d', 1, 2, 1e-5)\n"
        "    ctx.tracker.stage('r', 's', 1.0)\n"  # not a telemetry: not counted
    )
    calls = telemetry_calls(tmp_path)
    assert set(calls) == {"step", "privacy"}
    assert set(calls) != reports()


def progress_exports(custodian_losses: bool) -> PrometheusTelemetry:
    """The pipeline's per-step callback (`RunContext.progress`), driven for 25 steps."""
    from tdpdm.stages.context import RunContext

    t = PrometheusTelemetry()
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(custodian_losses=custodian_losses),
        losses={},
        telemetry=t,
        job_id="run-p",
    )
    on_step = RunContext.progress(ctx, "encoder", 25, 8)  # type: ignore[arg-type]
    for step in range(1, 26):
        on_step(step, 0.5 + 1 / step)
    return t


def test_pipeline_exports_the_loss_only_when_the_custodian_opts_in() -> None:
    """tdpdm_training_loss (the dashboard's opt-in loss panel) is set by the pipeline when
    custodian_losses is on, and never otherwise; steps, throughput and progress always are."""
    for opted_in in (False, True):
        t = progress_exports(opted_in)
        assert value(t, "tdpdm_training_steps_total", stage="encoder") == 25
        assert value(t, "tdpdm_training_samples_per_second", stage="encoder") > 0
        assert value(t, "tdpdm_stage_progress_ratio", run_id="run-p", stage="encoder") == 1.0
        losses = {k: v for k, v in samples(t).items() if k[0] == "tdpdm_training_loss"}
        if opted_in:
            assert losses == {("tdpdm_training_loss", (("stage", "encoder"),)): 0.5 + 1 / 25}
        else:
            assert losses == {}
