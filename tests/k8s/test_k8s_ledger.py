"""The privacy ledger in the deployments: a file on the shared ReadWriteMany volume, or an S3
object.

tdpdm's ledger store supports local paths (flock + atomic rename) and `s3://bucket/key` objects
(conditional writes); `open_store` refuses other schemes. The chart must accept both, keep a
file ledger on the volume every Ray pod mounts, and refuse what the code would refuse at run time.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_support import (
    CHART,
    KUSTOMIZE_DIR,
    NAMESPACE,
    REPO,
    VALUE_SETS,
    Doc,
    kubectl_path,
    load_docs,
    pod_templates,
    ray_schema_errors,
    run_helm,
    values_file,
)

from tdpdm.privacy.store import LedgerStoreError, open_store
from tdpdm.privacy.store.s3 import ObjectStoreLedgerStore

SHARED_VOLUME_DIR = KUSTOMIZE_DIR / "shared-volume"
UNSUPPORTED_LEDGER = "scheme is not supported for the ledger"


def merged_values(value_set: str) -> dict:
    def merge(base: dict, override: dict) -> dict:
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, yaml.safe_load(values_file(value_set).read_text()) or {})


def ledger_arg(entrypoint: str) -> str:
    args = shlex.split(entrypoint)
    return args[args.index("--ledger") + 1]


def under(path: str, mount: str) -> bool:
    path = posixpath.normpath(path.removeprefix("file://"))
    return path.startswith(posixpath.normpath(mount).rstrip("/") + "/")


def ray_node_templates(docs: list[Doc]) -> list[tuple[str, Doc]]:
    """Head and worker pod templates (the submitter only runs `ray job submit`)."""
    return [(n, t) for n, t in pod_templates(docs) if not n.endswith("-submitter")]


def claim_mounts(template: Doc) -> dict[str, str]:
    """mountPath -> claimName of the PVC volumes mounted in the template's Ray container."""
    spec = template["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    (container,) = spec["containers"]
    return {
        m["mountPath"]: claims[m["name"]]
        for m in container.get("volumeMounts", [])
        if m["name"] in claims
    }


def kustomize(directory: Path) -> list[Doc]:
    proc = subprocess.run(
        [kubectl_path(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return load_docs(proc.stdout)


# ---- the code this is all about ----


def test_the_ledger_store_takes_what_the_chart_takes(tmp_path: Path) -> None:
    """The chart's checks mirror the code: s3://bucket/key and files yes, gs:// and keyless no."""
    assert isinstance(open_store("s3://tdpdm/ledger"), ObjectStoreLedgerStore)
    with pytest.raises(LedgerStoreError, match="not supported"):
        open_store("gs://tdpdm/ledger.json")
    with pytest.raises(LedgerStoreError, match="names no object"):
        open_store("s3://tdpdm/")
    assert open_store(f"file://{tmp_path}/ledger.json").location == f"{tmp_path}/ledger.json"


# ---- Helm chart ----


def test_every_value_set_keeps_the_ledger_on_the_mounted_claim(
    value_set: str, rendered: list[Doc]
) -> None:
    values = merged_values(value_set)
    ledger = values["pipeline"]["ledger"]
    claim = values["sharedStorage"]["existingClaim"]
    mount = values["sharedStorage"]["mountPath"]
    assert claim, f"{value_set}: no sharedStorage.existingClaim"
    assert "://" not in ledger.removeprefix("file://"), f"{value_set}: {ledger}"
    assert under(ledger, mount), f"{value_set}: {ledger} is not under {mount}"
    templates = ray_node_templates(rendered)
    assert templates
    for name, template in templates:
        assert claim_mounts(template).get(mount) == claim, f"{value_set}: {name}"
    for job in (d for d in rendered if d["kind"] == "RayJob"):
        assert ledger_arg(job["spec"]["entrypoint"]) == ledger


def test_the_default_values_need_a_claim_for_the_ledger() -> None:
    """`helm install` with no values at all fails, naming the missing claim."""
    proc = run_helm("template", "tdpdm", str(CHART), check=False)
    assert proc.returncode != 0
    assert "sharedStorage.existingClaim is empty" in proc.stderr
    assert "pipeline.ledger=/mnt/tdpdm/ledger.json" in proc.stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_a_gcs_ledger_is_refused_in_every_value_set(value_set: str) -> None:
    ledger = "gs://tdpdm/ledger.json"
    proc = run_helm(
        "template",
        "tdpdm",
        str(CHART),
        "-f",
        str(values_file(value_set)),
        "--set",
        f"pipeline.ledger={ledger}",
        check=False,
    )
    assert proc.returncode != 0, f"{value_set}: {ledger} accepted"
    assert f'pipeline.ledger={ledger}: the "gs" {UNSUPPORTED_LEDGER}' in proc.stderr, proc.stderr
    assert "use an s3:// object" in proc.stderr and "a file on sharedStorage" in proc.stderr


def test_an_unsupported_ledger_is_named_before_the_missing_claim() -> None:
    """Both are wrong; the message about the scheme is the one that helps."""
    proc = run_helm(
        "template", "tdpdm", str(CHART), "--set", "pipeline.ledger=gs://tdpdm/ledger", check=False
    )
    assert proc.returncode != 0
    assert UNSUPPORTED_LEDGER in proc.stderr, proc.stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_an_s3_ledger_renders_in_every_value_set(value_set: str) -> None:
    """An S3 ledger is shared by every pod and cluster without a volume: accepted everywhere,
    and passed to the job as given."""
    ledger = "s3://tdpdm/ledger/ledger.json"
    proc = run_helm(
        "template",
        "tdpdm",
        str(CHART),
        "-f",
        str(values_file(value_set)),
        "--set",
        f"pipeline.ledger={ledger}",
        "--set",
        "rayJob.enabled=true",
    )
    (job,) = [d for d in load_docs(proc.stdout) if d["kind"] == "RayJob"]
    assert ledger_arg(job["spec"]["entrypoint"]) == ledger


def test_an_s3_ledger_needs_no_claim_and_says_so_in_the_notes() -> None:
    proc = run_helm(
        "install",
        "tdpdm",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        "--set",
        "pipeline.ledger=s3://tdpdm/ledger.json",
        "--set",
        "rayJob.enabled=true",
    )
    docs = [d for d in load_docs(proc.stdout.split("NOTES:", 1)[0]) if "kind" in d]
    assert any(d["kind"] == "RayJob" for d in docs)
    assert all(claim_mounts(t) == {} for _, t in ray_node_templates(docs))  # no volume needed
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "Privacy ledger: s3://tdpdm/ledger.json, an S3 object changed only by conditional" in (
        notes.replace("\n", " ")
    )
    assert "a file on PVC" not in notes
    assert "tdpdm budget show --ledger s3://tdpdm/ledger.json" in notes


@pytest.mark.parametrize("ledger", ["s3://tdpdm", "s3://tdpdm/", "s3://tdpdm/ledgers/"])
def test_an_s3_ledger_without_a_key_is_refused(ledger: str) -> None:
    proc = run_helm(
        "template", "tdpdm", str(CHART), "--set", f"pipeline.ledger={ledger}", check=False
    )
    assert proc.returncode != 0, f"{ledger} accepted"
    assert f"pipeline.ledger={ledger} names no object" in proc.stderr, proc.stderr


@pytest.mark.parametrize("ledger", ["ledger.json", "runs/ledger.json", "/tmp/ledger.json"])
def test_a_pod_local_ledger_file_is_still_refused(ledger: str) -> None:
    """A relative or off-volume path would be a file on the pod's own disk: lost with the pod."""
    proc = run_helm(
        "template",
        "tdpdm",
        str(CHART),
        "--set",
        "sharedStorage.existingClaim=tdpdm-shared",
        "--set",
        f"pipeline.ledger={ledger}",
        check=False,
    )
    assert proc.returncode != 0, f"{ledger} accepted"
    assert f"pipeline.ledger={ledger} is not on the shared volume" in proc.stderr, proc.stderr


def test_object_store_data_and_outputs_stay_allowed() -> None:
    proc = run_helm(
        "template",
        "tdpdm",
        str(CHART),
        "--set",
        "sharedStorage.existingClaim=tdpdm-shared",
        "--set",
        "rayJob.enabled=true",
        "--set",
        "pipeline.dataDir=s3://datasets/mnist",
        "--set",
        "pipeline.out=gs://runs/mnist",
    )
    (job,) = [d for d in load_docs(proc.stdout) if d["kind"] == "RayJob"]
    assert "--data-dir 's3://datasets/mnist'" in job["spec"]["entrypoint"]
    assert "--out 'gs://runs/mnist'" in job["spec"]["entrypoint"]
    assert ledger_arg(job["spec"]["entrypoint"]) == "/mnt/tdpdm/ledger.json"


@pytest.mark.parametrize(
    ("mount", "ledger"),
    [
        ("/mnt/tdpdm", "file:///mnt/tdpdm/ledger.json"),
        ("/data/", "/data/privacy/ledger.json"),
        ("/", "/ledger.json"),
    ],
)
def test_a_ledger_file_under_the_mount_is_accepted(mount: str, ledger: str) -> None:
    proc = run_helm(
        "template",
        "tdpdm",
        str(CHART),
        "--set",
        "sharedStorage.existingClaim=tdpdm-shared",
        "--set",
        f"sharedStorage.mountPath={mount}",
        "--set",
        f"pipeline.ledger={ledger}",
        "--set",
        "rayJob.enabled=true",
    )
    (job,) = [d for d in load_docs(proc.stdout) if d["kind"] == "RayJob"]
    assert ledger_arg(job["spec"]["entrypoint"]) == ledger


def test_notes_say_where_to_run_budget_commands(value_set: str) -> None:
    values = merged_values(value_set)
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
    notes = proc.stdout.split("NOTES:", 1)[1]
    claim = values["sharedStorage"]["existingClaim"]
    assert f"a file on PVC {claim}" in notes
    assert (
        f"-- tdpdm budget show --ledger {values['pipeline']['ledger']} "
        f"--dataset {values['pipeline']['dataset']}"
    ) in notes
    assert f"kubectl -n {NAMESPACE} exec $HEAD -c ray-head" in notes
    assert "tdpdm.io/ray-node=head" in notes


# ---- k8s/: plain manifests ----


def test_kustomize_rayjob_keeps_the_ledger_on_the_shared_claim(kustomized: list[Doc]) -> None:
    (job,) = [d for d in kustomized if d["kind"] == "RayJob"]
    ledger = ledger_arg(job["spec"]["entrypoint"])
    assert "://" not in ledger, ledger
    templates = ray_node_templates(kustomized)
    assert len(templates) == 2  # head and cpu workers
    for name, template in templates:
        mounts = claim_mounts(template)
        assert [m for m in mounts if under(ledger, m)], f"{name}: {ledger} not on a PVC ({mounts})"
        assert set(mounts.values()) == {"tdpdm-shared"}, name


def test_shared_volume_kustomization_creates_the_claim_the_rayjob_mounts(
    kustomized: list[Doc],
) -> None:
    docs = kustomize(SHARED_VOLUME_DIR)
    (pvc,) = docs
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["metadata"]["namespace"] == NAMESPACE
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for version in ("1.27.0", "1.35.0"):
        kubernetes_validate.validate(pvc, version, strict=True)
    claims = {c for _, t in ray_node_templates(kustomized) for c in claim_mounts(t).values()}
    assert claims == {pvc["metadata"]["name"]}
    # Not part of the base: deleting the job's manifests must never delete the ledger.
    assert "PersistentVolumeClaim" not in {d["kind"] for d in kustomized}


def test_name_prefix_overlay_keeps_claim_and_service_account_references(tmp_path: Path) -> None:
    shutil.copytree(KUSTOMIZE_DIR, tmp_path / "k8s")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: team-a\n"
        "namePrefix: team-a-\n"
        "resources: [../k8s, ../k8s/shared-volume]\n"
    )
    docs = kustomize(overlay)
    names = {d["kind"]: d["metadata"]["name"] for d in docs}
    assert names["PersistentVolumeClaim"] == "team-a-tdpdm-shared"
    assert names["ServiceAccount"] == "team-a-tdpdm"
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    assert ray_schema_errors(job) == []
    for name, template in pod_templates([job]):
        assert template["spec"]["serviceAccountName"] == "team-a-tdpdm", name
    for name, template in ray_node_templates([job]):
        assert set(claim_mounts(template).values()) == {"team-a-tdpdm-shared"}, name


def test_readme_own_claim_overlay_builds(tmp_path: Path) -> None:
    """The overlay in k8s/README.md that mounts a claim of another name works as written."""
    readme = (KUSTOMIZE_DIR / "README.md").read_text()
    marker = "# overlays/own-claim/kustomization.yaml\n"
    example = readme.split(marker, 1)[1].split("```", 1)[0]
    shutil.copytree(KUSTOMIZE_DIR, tmp_path / "k8s")
    overlay = tmp_path / "overlays" / "own-claim"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(example)
    (job,) = [d for d in kustomize(overlay) if d["kind"] == "RayJob"]
    templates = ray_node_templates([job])
    assert len(templates) == 2
    for name, template in templates:
        assert claim_mounts(template) == {"/mnt/tdpdm": "team-a-ledger"}, name


# ---- documentation ----

# `--ledger gs://bucket`, `ledger: gs://...`, `pipeline.ledger=gs://x`: a ledger URI of a scheme
# tdpdm has no store for, given as a value (s3:// and file:// are supported; prose such as
# "a `gs://` ledger is refused" does not match).
UNSUPPORTED_LEDGER_USE = re.compile(
    r"(--ledger[ =]|ledger: *|pipeline\.ledger=)(?!s3://|file://)[a-z0-9]+://\w"
)


@pytest.mark.parametrize(
    "path",
    [
        "docs/deploy.md",
        "helm/tdpdm/README.md",
        "helm/tdpdm/values.yaml",
        "helm/tdpdm/templates/NOTES.txt",
        *sorted(str(p.relative_to(REPO)) for p in (CHART / "ci").glob("*.yaml")),
        *sorted(str(p.relative_to(REPO)) for p in KUSTOMIZE_DIR.rglob("*.yaml")),
        "k8s/README.md",
    ],
)
def test_no_example_uses_an_unsupported_ledger(path: str) -> None:
    text = (REPO / path).read_text()
    uses = [m.group(0) for m in UNSUPPORTED_LEDGER_USE.finditer(text)]
    assert uses == [], f"{path}: {uses}"


def test_guide_explains_the_s3_ledger_and_what_the_store_must_support() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    section = guide.split("### The ledger on S3", 1)[1].split("\n## ", 1)[0]
    for needed in ("If-Match", "If-None-Match: *", "412 PreconditionFailed", "conditional"):
        assert needed in section, needed
    assert "tdpdm budget set --ledger s3://" in section
    assert UNSUPPORTED_LEDGER_USE.search("--ledger gs://tdpdm/l.json")  # the check still bites


def test_guide_runs_budget_commands_where_the_volume_is_mounted() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    section = guide.split("## 5. Set the privacy budget", 1)[1].split("\n## 6.", 1)[0]
    assert "kubectl -n tdpdm exec $HEAD -c ray-head" in section
    assert "tdpdm budget set --ledger /mnt/tdpdm/ledger.json" in section
    assert "claimName: tdpdm-shared" in section  # the stand-alone pod for RayJob-only setups
    assert "workstation" in section
