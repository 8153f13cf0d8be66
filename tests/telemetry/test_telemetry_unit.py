"""The telemetry facade: no-op default, Prometheus exporter over HTTP, Ray back end's mapping."""

from __future__ import annotations

import sys
import types
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tdpdm.telemetry as telemetry
from tdpdm.telemetry import (
    JOB_STATUSES,
    METRICS,
    SPECS,
    FanoutTelemetry,
    PrometheusTelemetry,
    RayTelemetry,
    Telemetry,
    get_telemetry,
    set_telemetry,
)
from tdpdm.telemetry import ray_metrics as ray_backend

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
    "tdpdm_tune_trials": ("state",),
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
        "RayTelemetry",
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
    t.trial("running", 3)
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


def test_trials_and_exclusive_job_status() -> None:
    t = PrometheusTelemetry()
    t.trial("running", 4)
    t.trial("pruned", 2)
    assert value(t, "tdpdm_tune_trials", state="running") == 4
    assert value(t, "tdpdm_tune_trials", state="pruned") == 2
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
        t.trial("completed", 6)
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
        assert got[("tdpdm_tune_trials", (("state", "completed"),))] == 6
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


def test_fanout_reaches_every_sink() -> None:
    a, b = PrometheusTelemetry(), PrometheusTelemetry()
    fan = FanoutTelemetry(a, b)
    fan.privacy("mnist", 1.0, 10.0, 1e-5)
    fan.stage("r", "s", 0.5)
    fan.step("s", 2, 0.1, 10.0)
    fan.step("s", 1, None, 10.0)
    fan.trial("running", 1)
    fan.job("r", "succeeded")
    for t in (a, b):
        assert value(t, "tdpdm_training_steps_total", stage="s") == 3
        assert value(t, "tdpdm_training_loss", stage="s") == 0.1
        assert value(t, "tdpdm_job_status", run_id="r", status="succeeded") == 1


# ---- Ray back end, against a stand-in for ray.util.metrics ----


class FakeMetric:
    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = ()) -> None:
        self.name, self.description, self.tag_keys = name, description, tuple(tag_keys)
        self.values: dict[tuple[tuple[str, str], ...], float] = {}
        registry.append(self)

    def _key(self, tags: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
        tags = tags or {}
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        assert all(isinstance(v, str) for v in tags.values())
        return tuple(sorted(tags.items()))


class FakeGauge(FakeMetric):
    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.values[self._key(tags)] = value


class FakeCounter(FakeMetric):
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        if value <= 0:  # as Ray does
            raise ValueError("value must be > 0")
        key = self._key(tags)
        self.values[key] = self.values.get(key, 0.0) + value


registry: list[FakeMetric] = []


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    registry.clear()
    ray = types.ModuleType("ray")
    util = types.ModuleType("ray.util")
    metrics: Any = types.ModuleType("ray.util.metrics")
    metrics.Gauge, metrics.Counter = FakeGauge, FakeCounter
    util.metrics = metrics  # type: ignore[attr-defined]
    ray.util = util  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.util", util)
    monkeypatch.setitem(sys.modules, "ray.util.metrics", metrics)
    ray_backend._cache.clear()
    yield
    ray_backend._cache.clear()


def test_ray_backend_names_and_values(fake_ray: None) -> None:
    t = RayTelemetry()
    by_name = {m.name: m for m in registry}
    # Ray exports Counter "x" as ray_x_total: registering without _total gives the same name.
    assert set(by_name) == {ray_backend.ray_metric_name(s.name, s.kind) for s in SPECS}
    assert "tdpdm_training_steps" in by_name and isinstance(
        by_name["tdpdm_training_steps"], FakeCounter
    )
    for spec in SPECS:
        m = by_name[ray_backend.ray_metric_name(spec.name, spec.kind)]
        assert m.tag_keys == spec.labels and m.description == spec.help
    t.privacy("mnist", 4.0, 10.0, 1e-5)
    t.stage("r1", "stage1", 0.75)
    t.step("stage1", 8, 0.2, 99.0)
    t.step("stage1", 0, 0.2, 0.0)  # Ray refuses inc(0): must not be called
    t.trial("running", 2)
    t.job("r1", "running")
    assert by_name["tdpdm_privacy_epsilon_spent"].values == {(("dataset", "mnist"),): 4.0}
    assert by_name["tdpdm_privacy_budget_remaining_epsilon"].values == {
        (("dataset", "mnist"),): 6.0
    }
    assert by_name["tdpdm_stage_progress_ratio"].values == {
        (("run_id", "r1"), ("stage", "stage1")): 0.75
    }
    assert by_name["tdpdm_training_steps"].values == {(("stage", "stage1"),): 8.0}
    assert by_name["tdpdm_tune_trials"].values == {(("state", "running"),): 2}
    status = by_name["tdpdm_job_status"].values
    assert status[(("run_id", "r1"), ("status", "running"))] == 1
    assert status[(("run_id", "r1"), ("status", "failed"))] == 0
    assert (("run_id", "r1"),) in by_name["tdpdm_last_progress_timestamp_seconds"].values


def test_ray_backend_exports_no_loss_unless_given(fake_ray: None) -> None:
    t = RayTelemetry()
    by_name = {m.name: m for m in registry}
    t.step("encoder", 4, None, 50.0)
    assert by_name["tdpdm_training_loss"].values == {}
    assert by_name["tdpdm_training_steps"].values == {(("stage", "encoder"),): 4.0}
    assert by_name["tdpdm_training_samples_per_second"].values == {(("stage", "encoder"),): 50.0}
    t.step("encoder", 1, 0.5, 50.0)  # opted in
    assert by_name["tdpdm_training_loss"].values == {(("stage", "encoder"),): 0.5}


def test_ray_metrics_are_built_once_per_process(fake_ray: None) -> None:
    RayTelemetry()
    RayTelemetry()
    assert len(registry) == len(SPECS)


def test_telemetry_imports_without_ray() -> None:
    """`import tdpdm.telemetry` must not import ray (ray is an optional extra)."""
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
        "try:\n"
        "    t.RayTelemetry()\n"
        "except ImportError as e:\n"
        "    assert 'tdpdm[ray]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('RayTelemetry built without ray')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
