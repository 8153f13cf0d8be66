"""The whole pipeline with everything on an S3 endpoint (moto's server on loopback).

The MNIST IDX files are uploaded to a bucket; `tdpdm run` (a real process, the CLI a user runs)
reads them from there, keeps its ledger there and writes its two parts there: `release/`
(synthetic data, sample grid, DP weights, report) and `custodian/` (private latents, the
custodian's report; its `work/` area is deleted when the run succeeds). Distinctive fake AWS
credentials must appear in no object, log or error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from moto_endpoint import SECRETS
from tdpdm_test_support import free_port, plausible_poisson_count

from tdpdm.privacy.ledger import Ledger
from tdpdm.report.schema import validate_report
from tdpdm.stages.latents_io import read_latents
from tdpdm.stages.synthetic_io import read_synthetic

REPO = Path(__file__).resolve().parents[2]
SUBSET = 1000
SYNTHETIC = 100


def _run_cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "tdpdm.cli", *args],
        cwd=REPO,
        env=dict(env, PYTHONPATH=pythonpath, OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tiny_run_args(data_dir: str, out: str, ledger: str, cache: Path) -> list[str]:
    settings = {
        "stage1.epochs": 1,
        "stage1.batch_size": 64,
        "stage2.epochs": 2,
        "stage2.batch_size": 64,
        "evaluation.enabled": "false",
        "evaluation.synthetic_count": SYNTHETIC,
        "distributed.backend": "local",
    }
    args = ["run", "--dataset", "mnist", "--data-dir", data_dir, "--out", out]
    args += ["--ledger", ledger, "--mode", "private", "--epsilon", "10", "--delta", "1e-5"]
    args += ["--subset", str(SUBSET), "--seed", "3", "--cache-dir", str(cache), "--no-progress"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.fixture
def mnist_in_bucket(s3, shared_datasets: Path):
    source = shared_datasets / "mnist"
    files = sorted(source.glob("*-ubyte.gz"))
    if len(files) != 4:
        pytest.skip(f"real MNIST IDX files not found in {source}")
    for f in files:
        s3.put(f"datasets/mnist/{f.name}", f.read_bytes())
    return s3


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_reads_and_writes_everything_on_s3(mnist_in_bucket, tmp_path: Path) -> None:
    s3 = mnist_in_bucket
    out, ledger_uri = s3.uri("runs", "first"), s3.uri("ledgers", "ledger.json")
    args = _tiny_run_args(s3.uri("datasets"), out, ledger_uri, tmp_path / "cache")

    done = _run_cli(args, {**os.environ, **s3.env}, timeout=840)

    assert done.returncode == 0, done.stderr[-3000:]
    release = {
        "runs/first/release/report.json",
        "runs/first/release/report.html",
        "runs/first/release/samples.png",
        "runs/first/release/synthetic/part-0.parquet",
        "runs/first/release/models/autoencoder.pt",
        "runs/first/release/models/diffusion.pt",
    }
    custodian = {
        "runs/first/custodian/report.json",
        "runs/first/custodian/report.html",
        "runs/first/custodian/latents/latents.parquet",  # private mode: never published
    }
    keys = set(s3.keys())
    # Exactly the two parts (evaluation is off: no evaluation.json) and the ledger; the work
    # area (checkpoints with secret generator state) is gone after success.
    assert keys - {k for k in keys if k.startswith("datasets/")} == {
        *release,
        *custodian,
        "ledgers/ledger.json",
    }
    assert not list(tmp_path.glob("runs*")) and not (REPO / "runs" / "first").exists()

    report = json.loads(s3.get("runs/first/release/report.json"))
    validate_report(report)
    assert report["privacy"]["ledger"] == ledger_uri
    assert set(report["metrics"].values()) == {None}  # nothing read from real data
    assert s3.get("runs/first/release/samples.png").startswith(b"\x89PNG")
    assert b"<html" in s3.get("runs/first/release/report.html").lower()
    kept = json.loads(s3.get("runs/first/custodian/report.json"))
    validate_report(kept)
    assert kept["privacy"] == report["privacy"] and "never publish" in kept["part"]

    # Stage-2 input and the published output read back from the bucket with pyarrow.
    latents_uri = s3.uri("runs", "first", "custodian", "latents", "latents.parquet")
    latents, labels, meta = read_latents(latents_uri)
    assert latents.shape[0] == labels.shape[0] and meta and meta["sensitive"] is True
    assert plausible_poisson_count(latents.shape[0], SUBSET), latents.shape  # Poisson subset
    synthetic_uri = s3.uri("runs", "first", "release", "synthetic", "part-0.parquet")
    images, synth_labels, _ = read_synthetic(synthetic_uri)
    assert images.shape == (SYNTHETIC, 28, 28) and len(synth_labels) == SYNTHETIC

    # The ledger on S3 holds this run's settled charge, at the epsilon the report states.
    ledger = Ledger(ledger_uri)
    [charge] = ledger.charges("mnist")
    assert charge.status == "settled" and charge.spent
    assert ledger.spent("mnist").epsilon == pytest.approx(report["privacy"]["epsilon"], rel=1e-9)

    # No credential anywhere: objects written, the run's output and its logs.
    for key in sorted(keys):
        if key.startswith("datasets/"):
            continue
        blob = s3.get(key)
        assert not any(secret.encode() in blob for secret in SECRETS), key
    assert not any(secret in done.stdout + done.stderr for secret in SECRETS)


def test_unreachable_endpoint_is_one_line_and_leaves_the_ledger(s3, tmp_path: Path) -> None:
    """The ledger (local here) is prepared; the data and outputs are on an endpoint that does
    not answer. The run fails before planning with one line naming the URI, no credentials,
    and the ledger file is byte for byte as it was."""
    ledger_path = tmp_path / "ledger.json"
    Ledger(str(ledger_path)).set_budget("mnist", 10.0, 1e-5, "add_remove")
    before = ledger_path.read_bytes()
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, **s3.env, "AWS_ENDPOINT_URL": dead, "AWS_ENDPOINT_URL_S3": dead}
    data_uri = s3.uri("datasets")
    args = _tiny_run_args(data_uri, s3.uri("runs", "x"), str(ledger_path), tmp_path / "cache")
    args += ["--set", "download=false"]

    done = _run_cli(args, env, timeout=300)

    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("tdpdm: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert data_uri in errors[0]
    assert "Traceback" not in done.stderr
    assert not any(secret in done.stdout + done.stderr for secret in SECRETS)
    assert ledger_path.read_bytes() == before
    assert s3.keys() == []  # nothing written anywhere


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_stage2_reads_released_latents_back_from_s3(mnist_in_bucket, tmp_path: Path) -> None:
    """`tdpdm encode` writes the released latents to the bucket; `tdpdm diffuse --from s3://...`
    (another process) reads them back with pyarrow and publishes there. Stage 2 on released
    latents is post-processing: the ledger holds the encode charge only."""
    s3 = mnist_in_bucket
    env = {**os.environ, **s3.env}
    ledger_uri = s3.uri("ledgers", "ledger.json")
    common = ["--mode", "released", "--set", "stage2.released_model=deconvolution"]
    common += ["--set", "stage2.mixture_iterations=10"]

    encode = _tiny_run_args(s3.uri("datasets"), s3.uri("enc"), ledger_uri, tmp_path / "cache")
    encode[0] = "encode"
    encode = [a for a in encode if a != "private"]
    encode.remove("--mode")
    done = _run_cli(encode + common, env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # A DP release of latents is publishable; the manifest is the custodian's.
    assert set(s3.keys("enc/")) == {
        "enc/release/latents/latents.parquet",
        "enc/release/models/autoencoder.pt",
        "enc/custodian/stage1.json",
    }
    ledger = Ledger(ledger_uri)
    spent_after_encode = ledger.spent("mnist").epsilon

    diffuse = _tiny_run_args(s3.uri("datasets"), s3.uri("diff"), ledger_uri, tmp_path / "cache")
    diffuse[0] = "diffuse"
    diffuse = [a for a in diffuse if a != "private"]
    diffuse.remove("--mode")
    done2 = _run_cli([*diffuse, *common, "--from", s3.uri("enc")], env, timeout=600)
    assert done2.returncode == 0, done2.stderr[-3000:]

    keys = set(s3.keys("diff/"))
    published = {"report.json", "report.html", "synthetic/part-0.parquet", "samples.png"}
    published |= {"models/autoencoder.pt", "models/diffusion.pt"}
    assert {f"diff/release/{name}" for name in published} <= keys
    assert all(k.startswith(("diff/release/", "diff/custodian/")) for k in keys), sorted(keys)
    assert not any(k.startswith("diff/custodian/work/") for k in keys)
    report = json.loads(s3.get("diff/release/report.json"))
    validate_report(report)
    assert report["privacy"]["adjacency"] == "replace_one"
    assert ledger.spent("mnist").epsilon == pytest.approx(spent_after_encode, rel=1e-12)
    assert [c.status for c in ledger.charges("mnist")] == ["settled"]
    logs = done.stdout + done.stderr + done2.stdout + done2.stderr
    assert not any(secret in logs for secret in SECRETS)
