"""Rendered objects against real schemas: KubeRay v1.7.0 CRDs and the Kubernetes OpenAPI."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
from k8s_support import (
    KUSTOMIZE_DIR,
    RAY_KINDS,
    Doc,
    as_pods,
    core_kinds,
    kubectl_path,
    load_docs,
    ray_schema_errors,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
K8S_VERSIONS = ("1.27.0", "1.35.0")
# Prometheus Operator kinds have no schema in kubernetes-validate; they are checked by shape
# here and by promtool (rules) in test_k8s_monitoring.py.
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}


def test_every_ray_object_matches_the_kuberay_crd(rendered: list[Doc]) -> None:
    ray_docs = [d for d in rendered if d["kind"] in RAY_KINDS]
    assert ray_docs, "every value set renders a RayCluster or a RayJob"
    for doc in ray_docs:
        assert doc["apiVersion"] == "ray.io/v1"
        assert ray_schema_errors(doc) == []


def test_crd_validation_catches_typos_and_bad_types(rendered: list[Doc]) -> None:
    """The strict CRD check must be able to fail, or the test above proves nothing."""
    doc = copy.deepcopy(next(d for d in rendered if d["kind"] in RAY_KINDS))
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    if spec is None:
        pytest.skip("RayJob on an existing cluster has no cluster spec")
    spec["headGroupSpec"]["template"]["spec"]["nodeSelecter"] = {"a": "b"}
    spec["enableInTreeAutoscaling"] = "yes"
    errors = "\n".join(ray_schema_errors(doc))
    assert "nodeSelecter" in errors
    assert "'yes' is not of type 'boolean'" in errors


def test_core_kinds_validate_against_kubernetes(rendered: list[Doc]) -> None:
    core = core_kinds(rendered)
    assert core
    unknown = {
        d["kind"] for d in rendered if d not in core and d["kind"] not in RAY_KINDS | OPERATOR_KINDS
    }
    assert not unknown, f"kinds checked by nothing: {unknown}"
    for version in K8S_VERSIONS:
        for doc in core:
            kubernetes_validate.validate(doc, version, strict=True)


def test_ray_pod_templates_are_valid_pod_specs(rendered: list[Doc]) -> None:
    """Pod templates inside Ray objects, checked as Pods against the Kubernetes schema."""
    for pod in as_pods(rendered):
        kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)


def test_operator_kinds_have_the_expected_shape(rendered: list[Doc]) -> None:
    for doc in rendered:
        if doc["kind"] == "PodMonitor":
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]["selector"]["matchLabels"]
            assert all(e["port"] for e in doc["spec"]["podMetricsEndpoints"])
        if doc["kind"] == "PrometheusRule":
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            for group in doc["spec"]["groups"]:
                assert group["name"] and group["rules"]


# ---- k8s/: plain kustomize manifests ----


def test_kustomize_manifests_validate(kustomized: list[Doc]) -> None:
    assert {d["kind"] for d in kustomized} == {
        "Namespace",
        "ServiceAccount",
        "NetworkPolicy",
        "RayJob",
    }
    for doc in kustomized:
        if doc["kind"] in RAY_KINDS:
            assert ray_schema_errors(doc) == []
        else:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tdpdm"
    for pod in as_pods(kustomized):
        kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)


def test_kustomize_overlay_rewrites_every_image(tmp_path: Path) -> None:
    """An overlay's `images:` reaches the RayJob's pod templates (via kustomizeconfig.yaml)."""
    base = os.path.relpath(KUSTOMIZE_DIR, tmp_path)  # kustomize refuses absolute bases
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{base}]\n"
        "namespace: team-a\n"
        "images:\n"
        "  - name: tdpdm\n"
        "    newName: registry.example.com/ml/tdpdm\n"
        "    newTag: 9.9.9-cpu\n"
    )
    proc = subprocess.run(
        [kubectl_path(), "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    docs = load_docs(proc.stdout)
    pods = as_pods(docs)
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert images == {"registry.example.com/ml/tdpdm:9.9.9-cpu"}
    assert len(pods) == 3  # head, cpu workers, submitter
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["metadata"]["namespace"] == "team-a"


def test_readme_overlay_example_builds(tmp_path: Path) -> None:
    """The overlay shown in k8s/README.md works as written."""
    readme = (KUSTOMIZE_DIR / "README.md").read_text()
    marker = "# overlays/mnist-eps3/kustomization.yaml\n"
    example = readme.split(marker, 1)[1].split("```", 1)[0]
    shutil.copytree(KUSTOMIZE_DIR, tmp_path / "k8s")
    overlay = tmp_path / "overlays" / "mnist-eps3"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(example)
    proc = subprocess.run(
        [kubectl_path(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    job = next(d for d in load_docs(proc.stdout) if d["kind"] == "RayJob")
    assert job["metadata"]["namespace"] == "team-a"
    assert "--epsilon 3 " in job["spec"]["entrypoint"]
    assert ray_schema_errors(job) == []
