"""values.schema.json (and the chart's cross-field checks) refuse bad values with clear errors."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from k8s_support import CHART, VALUE_SETS, run_helm, values_file

SCHEMA_ERROR = "values don't meet the specifications of the schema"
# The one value without a default (the ledger's volume). Every case below starts from it, so that
# each tests its own mistake; a case may override it (a later --set wins).
CLAIM = "sharedStorage.existingClaim=tdpdm-shared"

# (--set arguments, what helm's error must say). Each line is a mistake a user could make.
BAD_VALUES: list[tuple[list[str], list[str]]] = [
    (["s3.secretAccessKey=abc"], [SCHEMA_ERROR, "/s3", "'secretAccessKey' not allowed"]),
    (["s3.accessKeyId=AKIAEXAMPLE"], [SCHEMA_ERROR, "/s3", "'accessKeyId' not allowed"]),
    (
        ["extraEnv[0].name=AWS_SECRET_ACCESS_KEY", "extraEnv[0].value=x"],
        [SCHEMA_ERROR, "/extraEnv/0/name"],
    ),
    (["gpuWorkers.gpusPerWorker=0"], [SCHEMA_ERROR, "/gpuWorkers/gpusPerWorker", "minimum"]),
    (["pipeline.epsilon=-1"], [SCHEMA_ERROR, "/pipeline/epsilon", "exclusiveMinimum"]),
    (["pipeline.delta=1"], [SCHEMA_ERROR, "/pipeline/delta", "exclusiveMaximum"]),
    (["pipeline.mode=public"], [SCHEMA_ERROR, "/pipeline/mode", "'released', 'private'"]),
    (["pipeline.dataset=cifar10"], [SCHEMA_ERROR, "/pipeline/dataset", "'mnist'"]),
    (["pipeline.ledger=s3://x;rm -rf /"], [SCHEMA_ERROR, "/pipeline/ledger", "does not match"]),
    (["pipeline.metricsPort=8265"], [SCHEMA_ERROR, "/pipeline/metricsPort"]),
    (["security.runAsUser=0"], [SCHEMA_ERROR, "/security/runAsUser", "minimum"]),
    (["security.privileged=true"], [SCHEMA_ERROR, "/security", "'privileged' not allowed"]),
    (["workers.resources.limits.cpu=lots"], [SCHEMA_ERROR, "/workers/resources/limits/cpu"]),
    (["workers.resources=null"], [SCHEMA_ERROR, "/workers"]),
    (["image.pullPolicy=Sometimes"], [SCHEMA_ERROR, "/image/pullPolicy"]),
    (["image.digest=sha256:abc"], [SCHEMA_ERROR, "/image/digest"]),
    (["rayJob.backoffLimit=10"], [SCHEMA_ERROR, "/rayJob/backoffLimit", "maximum"]),
    (["autoscaling.upscalingMode=Fast"], [SCHEMA_ERROR, "/autoscaling/upscalingMode"]),
    (["ray.auth.mode=none"], [SCHEMA_ERROR, "/ray/auth/mode"]),
    (["pipeline.epsilon=many"], [SCHEMA_ERROR, "/pipeline/epsilon", "does not match"]),
    (
        ["networkPolicy.egress.allowedCIDRs[0]=everywhere"],
        [SCHEMA_ERROR, "/networkPolicy/egress/allowedCIDRs/0"],
    ),
    (["workerz.replicas=1"], [SCHEMA_ERROR, "'workerz' not allowed"]),
    # Cross-field rules, enforced by templates/validate.yaml and the worker-group helper.
    (["image.tag=latest"], ["image.tag=latest is not reproducible"]),
    (["pipeline.device=cuda"], ["pipeline.device=cuda needs gpuWorkers.enabled=true"]),
    (["workers.replicas=9"], ['worker group "cpu"', "replicas (9) <= maxReplicas (4)"]),
    (["rayCluster.enabled=false"], ["nothing to deploy"]),
    # `--set` passes floats as strings, so their ranges are checked by the templates.
    (["pipeline.epsilon=0.0"], ["pipeline.epsilon must be > 0, got 0.0"]),
    (["pipeline.delta=1.5"], ["pipeline.delta must be in (0, 1), got 1.5"]),
    (
        ["monitoring.prometheusRule.budgetSpentRatio=1.5"],
        ["budgetSpentRatio must be in (0, 1], got 1.5"],
    ),
    (
        ["rayJob.enabled=true", "rayJob.useExistingCluster=true", "rayCluster.enabled=false"],
        ["rayJob.useExistingCluster needs rayCluster.enabled=true"],
    ),
    (["gpuWorkers.enabled=true", "image.digest=sha256:" + "a" * 64], ["image.gpuDigest is not"]),
    # The privacy ledger: an s3:// object (conditional writes) or a file on the shared volume.
    (
        ["pipeline.ledger=s3://tdpdm/"],
        [
            "pipeline.ledger=s3://tdpdm/ names no object",
            "e.g. pipeline.ledger=s3://BUCKET/tdpdm/ledger.json",
        ],
    ),
    (
        ["pipeline.ledger=gs://tdpdm/ledger.json"],
        [
            'pipeline.ledger=gs://tdpdm/ledger.json: the "gs" scheme is not supported',
            "use an s3:// object",
            "a file on sharedStorage, e.g. pipeline.ledger=/mnt/tdpdm/ledger.json",
        ],
    ),
    (
        ["sharedStorage.existingClaim="],
        [
            "pipeline.ledger=/mnt/tdpdm/ledger.json is a file but sharedStorage.existingClaim is "
            "empty",
            "lost with the pod",
            "overspend the budget",
        ],
    ),
    (
        ["pipeline.ledger=/tmp/ledger.json"],
        ["pipeline.ledger=/tmp/ledger.json is not on the shared volume", "(/mnt/tdpdm)"],
    ),
    (["pipeline.ledger=/mnt/tdpdm/../ledger.json"], ["is not on the shared volume"]),
    (["pipeline.ledger=ledger.json"], ["pipeline.ledger=ledger.json is not on the shared volume"]),
    (["pipeline.ledger=/mnt/tdpdm"], ["is not on the shared volume"]),
    (
        ["sharedStorage.mountPath=/data"],
        ["pipeline.ledger=/mnt/tdpdm/ledger.json is not on the shared volume", "(/data)"],
    ),
]


@pytest.mark.parametrize(("sets", "messages"), BAD_VALUES, ids=[" ".join(s) for s, _ in BAD_VALUES])
def test_bad_values_are_rejected_with_a_clear_message(sets: list[str], messages: list[str]) -> None:
    args = ["template", "tdpdm", str(CHART), "--set", CLAIM]
    for item in sets:
        args += ["--set", item]
    proc = run_helm(*args, check=False)
    assert proc.returncode != 0, f"accepted: {sets}"
    for message in messages:
        assert message in proc.stderr, proc.stderr


def test_float_values_given_with_set_are_accepted() -> None:
    proc = run_helm(
        "template",
        "tdpdm",
        str(CHART),
        "--set",
        CLAIM,
        "--set",
        "rayJob.enabled=true",
        "--set",
        "pipeline.epsilon=2.5",
        "--set",
        "pipeline.delta=1e-6",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.prometheusRule.budgetSpentRatio=0.75",
    )
    assert "--epsilon 2.5 --delta 1e-6" in proc.stdout
    assert "> 0.75" in proc.stdout


def test_schema_is_valid_and_accepts_every_ci_value_set() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert list(validator.iter_errors(defaults)) == []
    for name in VALUE_SETS:
        merged = merge(defaults, yaml.safe_load(values_file(name).read_text()) or {})
        errors = [e.message for e in validator.iter_errors(merged)]
        assert errors == [], name


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
