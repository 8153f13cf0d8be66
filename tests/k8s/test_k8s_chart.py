"""helm lint/template for every CI value set, and the shape of what each one renders."""

from __future__ import annotations

import pytest
import yaml
from k8s_support import CHART, NAMESPACE, VALUE_SETS, Doc, run_helm, values_file


def kinds(docs: list[Doc]) -> set[str]:
    return {d["kind"] for d in docs}


def one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def test_value_sets_cover_the_required_configurations() -> None:
    assert {"default", "gpu", "s3", "rayjob"} <= set(VALUE_SETS)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(value_set: str) -> None:
    proc = run_helm(
        "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(values_file(value_set))
    )
    assert "0 chart(s) failed" in proc.stdout


def test_every_object_is_namespaced_and_labelled(rendered: list[Doc]) -> None:
    for doc in rendered:
        meta = doc["metadata"]
        # Only the dashboard ConfigMap may move (to Grafana's namespace, in the gpu set).
        allowed = {NAMESPACE, "monitoring"} if meta["name"].endswith("-dashboard") else {NAMESPACE}
        assert meta.get("namespace") in allowed, f"{doc['kind']} {meta['name']}"
        assert meta["labels"]["app.kubernetes.io/name"] == "tdpdm"
        assert meta["labels"]["app.kubernetes.io/instance"] == "tdpdm"


def test_default_renders_a_cpu_raycluster_without_rbac(render_all: dict[str, list[Doc]]) -> None:
    docs = render_all["default"]
    assert kinds(docs) == {"RayCluster", "ServiceAccount", "NetworkPolicy", "ConfigMap"}
    cluster = one(docs, "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is False
    assert [g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]] == ["cpu"]
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    assert cluster["spec"]["rayVersion"] == "2.60.0"


def test_gpu_group_requests_gpus_on_gpu_nodes(render_all: dict[str, list[Doc]]) -> None:
    docs = render_all["gpu"]
    cluster = one(docs, "RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu_spec = groups["gpu"]["template"]["spec"]
    (container,) = gpu_spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"].endswith(":0.1.0-gpu")
    assert gpu_spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_spec[
        "tolerations"
    ]
    cpu_container = groups["cpu"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    assert cpu_container["image"].endswith(":0.1.0-cpu")
    # Autoscaling is on in this set: the autoscaler sidecar is hardened and RBAC exists.
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert cluster["spec"]["autoscalerOptions"]["version"] == "v2"
    assert {"Role", "RoleBinding", "PodMonitor", "PrometheusRule"} <= kinds(docs)


def test_s3_credentials_come_from_the_secret_only(render_all: dict[str, list[Doc]]) -> None:
    cluster = one(render_all["s3"], "RayCluster")
    spec = cluster["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]
    for template in templates:
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": "tdpdm-s3",
            "key": "access-key",
        }
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "tdpdm-s3",
            "key": "secret-key",
        }
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio.svc:9000"
        assert env["AWS_REGION"]["value"] == "us-east-1"


def test_workload_identity_uses_the_service_account(render_all: dict[str, list[Doc]]) -> None:
    docs = render_all["workload-identity"]
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/tdpdm-s3"
    }
    cluster = one(docs, "RayCluster")
    env = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert not [e for e in env if e["name"].startswith("AWS_") and "valueFrom" in e]
    assert (
        cluster["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
        == (sa["metadata"]["name"])
    )


def test_rayjob_runs_the_pipeline_on_its_own_cluster(render_all: dict[str, list[Doc]]) -> None:
    docs = render_all["rayjob"]
    assert "RayCluster" not in kinds(docs)
    job = one(docs, "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"] == (
        "tdpdm run --config /etc/tdpdm/config.yaml --dataset 'fashion-mnist' "
        "--data-dir 's3://datasets/fashion-mnist' --epsilon 3 --delta 1e-05 --mode released "
        "--subset 10000 --seed 7 --device cpu --ledger '/mnt/tdpdm/ledger.json' "
        "--out 's3://tdpdm-runs/fashion-eps3' --metrics-port 9400"
    )
    assert spec["backoffLimit"] == 0, "a retry would spend privacy budget again"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] == "K8sJobMode"
    assert "rayClusterSpec" in spec and "clusterSelector" not in spec
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert "stage1:" in configmaps["tdpdm-pipeline"]["data"]["config.yaml"]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in head["containers"][0]["volumeMounts"]}
    assert mounts["/etc/tdpdm"]["readOnly"] is True
    assert "/mnt/tdpdm" in mounts and "/tmp" in mounts  # shared PVC, read-only root's /tmp


def test_rayjob_can_target_the_release_cluster(render_all: dict[str, list[Doc]]) -> None:
    docs = render_all["rayjob-existing-cluster"]
    cluster = one(docs, "RayCluster")
    job = one(docs, "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "rayClusterSpec" not in job["spec"]
    assert "submitterPodTemplate" not in job["spec"]  # HTTPMode: the operator submits
    assert "--config '/app/configs/mnist.yaml'" in job["spec"]["entrypoint"]


def test_monitoring_objects_target_the_ray_pods(render_all: dict[str, list[Doc]]) -> None:
    docs = render_all["gpu"]
    monitor = one(docs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == [
        "metrics",
        "tdpdm-metrics",
    ]
    selector = monitor["spec"]["selector"]["matchLabels"]
    cluster = one(docs, "RayCluster")
    spec = cluster["spec"]
    for template in [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]:
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items()
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 8080 and ports["tdpdm-metrics"] == 9400


def test_notes_render_for_every_set(value_set: str) -> None:
    """NOTES.txt is only rendered by install/upgrade; `template --show-only` cannot reach it."""
    proc = run_helm(
        "install",
        "tdpdm",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        "-f",
        str(values_file(value_set)),
    )
    assert "tdpdm budget show --ledger" in proc.stdout
    assert "KubeRay operator" in proc.stdout


def test_rayjob_takes_your_own_data(tmp_path) -> None:
    """`pipeline.data` and its options become `tdpdm run` flags that tdpdm's own parser and
    config accept, and the built-in's `--dataset`/`--data-dir` are then not passed."""
    import shlex

    from tdpdm.cli import build_parser
    from tdpdm.config import load_config
    from tdpdm.run_flags import run_overrides

    own = {
        "pipeline.data": "s3://hospital/xrays/",
        "pipeline.dataName": "xrays",
        "pipeline.imageSize": "64",
        "pipeline.channels": "3",
        "pipeline.classes": "{normal,pneumonia}",
        "pipeline.dataTest": "s3://hospital/xrays-test/",
        "pipeline.privacyUnit": "patient_id",
        "pipeline.recordsPerUnit": "3",
        "pipeline.mode": "private",
    }
    sets = [arg for key, value in own.items() for arg in ("--set", f"{key}={value}")]
    text = run_helm(
        "template",
        "tdpdm",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "-f",
        str(values_file("rayjob")),
        *sets,
    ).stdout
    entrypoint = one([d for d in yaml.safe_load_all(text) if d], "RayJob")["spec"]["entrypoint"]
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["tdpdm", "run"] and "--dataset" not in argv and "--data-dir" not in argv
    args = build_parser().parse_args(argv[1:])
    overrides = run_overrides(args)
    overrides.pop("config", None)
    cfg = load_config(None, overrides)
    assert (cfg.data, cfg.dataset, cfg.image_size, cfg.channels) == (
        "s3://hospital/xrays/",
        "xrays",
        64,
        3,
    )
    assert cfg.classes == ("normal", "pneumonia") and cfg.data_test == "s3://hospital/xrays-test/"
    assert (cfg.privacy_unit, cfg.records_per_unit) == ("patient_id", 3)


def test_own_data_values_are_refused_by_the_schema_when_unsafe() -> None:
    bad = run_helm(
        "template",
        "tdpdm",
        str(CHART),
        "--set",
        "pipeline.data=s3://x/a;rm -rf",
        check=False,
    )
    assert bad.returncode != 0 and "pipeline" in bad.stderr and "data" in bad.stderr
    odd = run_helm("template", "tdpdm", str(CHART), "--set", "pipeline.imageSize=30", check=False)
    assert odd.returncode != 0 and "imageSize" in odd.stderr
