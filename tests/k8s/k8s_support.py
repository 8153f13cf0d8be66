"""Helpers for the offline Kubernetes checks: a real helm binary, rendered value sets, schemas.

No API server or container engine exists here, so the chart is checked as far as it can be
offline: rendered with the real helm, then validated against the KubeRay CRD schemas, the
Kubernetes OpenAPI schemas (kubernetes-validate) and checkov. Tools come from
scripts/setup_tools.sh; under CI a missing tool fails the run instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from tdpdm_test_support import helm_env, helm_path, require_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "tdpdm"
CI_VALUES = CHART / "ci"
KUSTOMIZE_DIR = REPO / "k8s"
SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0"
RELEASE = "tdpdm"
NAMESPACE = "tdpdm"
VALUE_SETS = sorted(p.stem.removesuffix("-values") for p in CI_VALUES.glob("*-values.yaml"))
CORE_API_VERSIONS = {"v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1", "batch/v1"}
RAY_KINDS = {"RayCluster", "RayJob"}

Doc = dict[str, Any]


def kubectl_path() -> str:
    candidate = os.environ.get("TDPDM_KUBECTL") or str(REPO / ".tools" / "bin" / "kubectl")
    return require_tool(candidate, "kubectl", "TDPDM_KUBECTL or .tools/bin/kubectl")


def checkov_path() -> str:
    return require_tool(REPO / ".venv-checkov" / "bin" / "checkov", "checkov", ".venv-checkov")


def promtool_path() -> str:
    return require_tool(shutil.which("promtool"), "promtool", "Debian package prometheus")


def values_file(value_set: str) -> Path:
    return CI_VALUES / f"{value_set}-values.yaml"


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with a throw-away HOME so no user config or repo cache leaks into the result."""
    env = helm_env(Path(tempfile.gettempdir()) / f"tdpdm-helm-{os.getuid()}")
    proc = subprocess.run(
        [helm_path(), *args], capture_output=True, text=True, timeout=120, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@cache
def render(value_set: str) -> str:
    """The chart rendered with one CI value set; cached, so helm runs once per set."""
    return run_helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(values_file(value_set))
    ).stdout


def load_docs(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


# ---- KubeRay CRD schemas ----


def _strict(schema: Any) -> Any:
    """Refuse unknown fields, as the API server's structural pruning would silently drop them.

    CRD schemas leave additionalProperties open (the API server prunes unknown fields instead),
    so a typo such as `nodeSelecter` would validate and then vanish; closing every object that
    lists its properties turns such typos into errors here.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(kind: str, strict: bool = True) -> dict[str, Any]:
    filename = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}[kind]
    path = SCHEMAS / filename
    if not path.is_file():
        require_tool(None, f"KubeRay CRD {filename}", str(SCHEMAS))
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    return _strict(schema) if strict else schema


def ray_schema_errors(doc: Doc) -> list[str]:
    """CRD-schema errors of a rendered RayCluster or RayJob (empty when valid)."""
    validator = jsonschema.Draft7Validator(crd_schema(doc["kind"]))
    return [
        f"{doc['kind']} {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


# ---- Ray pod templates ----


def ray_cluster_specs(doc: Doc) -> list[Doc]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob" and doc["spec"].get("rayClusterSpec"):
        return [doc["spec"]["rayClusterSpec"]]
    return []


def pod_templates(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(name, PodTemplateSpec) for every Ray head, worker group and RayJob submitter."""
    for doc in docs:
        name = doc["metadata"]["name"]
        for spec in ray_cluster_specs(doc):
            yield f"{name}-head", spec["headGroupSpec"]["template"]
            for group in spec.get("workerGroupSpecs", []):
                yield f"{name}-{group['groupName']}", group["template"]
        if doc["kind"] == "RayJob" and doc["spec"].get("submitterPodTemplate"):
            yield f"{name}-submitter", doc["spec"]["submitterPodTemplate"]


def as_pods(docs: list[Doc]) -> list[Doc]:
    """Ray pod templates as Pods, so core-kind tools (checkov, kubernetes-validate) see them."""
    pods = []
    for name, template in pod_templates(docs):
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "labels": template.get("metadata", {}).get("labels", {}),
                },
                "spec": template["spec"],
            }
        )
    return pods


def core_kinds(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["apiVersion"] in CORE_API_VERSIONS]
