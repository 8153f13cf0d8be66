"""`tdpdm encode` then `tdpdm diffuse` (private mode) against one ledger budget.

Each command writes a release part (covered by the guarantee) and a custodian part (the stage-1
manifest, private latents, opted-in metrics: 0600, never published)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tdpdm_test_support import (
    RUN_CUSTODIAN_FILES,
    RUN_RELEASE_FILES,
    assert_run_parts,
    files_under,
    set_flags,
    tiny_run_sets,
)

from tdpdm.cli import main
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.events import event_from_dict
from tdpdm.privacy.ledger import Ledger
from tdpdm.report.schema import validate_report

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def stage_flags(tmp_path: Path, data_dir: Path, out: str, epsilon: float) -> list[str]:
    return [
        "--mode",
        "private",
        "--dataset",
        "mnist",
        "--epsilon",
        str(epsilon),
        "--delta",
        "1e-5",
        "--data-dir",
        str(data_dir),
        "--ledger",
        str(tmp_path / "ledger.json"),
        "--out",
        str(tmp_path / out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--subset",
        "1500",
        "--seed",
        "3",
        "--no-progress",
        *tiny_run_sets(),
    ]


def test_encode_then_diffuse(
    tmp_path: Path,
    shared_datasets: Path,
    capsys: pytest.CaptureFixture[str],
    one_torch_thread: None,
    small_evaluation: None,
) -> None:
    ledger_path = str(tmp_path / "ledger.json")
    budget = ["budget", "set", "--ledger", ledger_path, "--dataset", "mnist"]
    assert main([*budget, "--epsilon", "10", "--delta", "1e-5"]) == 0
    capsys.readouterr()

    assert main(["encode", *stage_flags(tmp_path, shared_datasets, "enc", 3.0)]) == 0
    manifest = json.loads(capsys.readouterr().out)
    enc = tmp_path / "enc"
    assert manifest == json.loads((enc / "custodian" / "stage1.json").read_text())
    # Stage 1 alone: the DP autoencoder is published; the manifest and the private latents
    # are the custodian's (0600); the work area (secret generator state) is gone.
    assert_run_parts(
        enc,
        release={"models/autoencoder.pt"},
        custodian={"stage1.json", "latents/latents.parquet"},
    )
    assert [(e["kind"], e["stage"]) for e in manifest["events"]] == [
        ("poisson_gaussian", "encoder")
    ]
    assert 0 < manifest["guarantee"]["epsilon"] <= 3.0
    assert manifest["n_records"] == 1500  # planned: --subset is a Poisson subset of that size
    ledger = Ledger(ledger_path)
    after_encode = ledger.spent("mnist").epsilon
    assert after_encode == pytest.approx(manifest["guarantee"]["epsilon"], rel=1e-9)

    # Evaluation is opt-in (it reads real data without noise): on here, through --set.
    flags = stage_flags(tmp_path, shared_datasets, "diff", 8.0)
    flags += set_flags("evaluation.enabled=true")
    encoded = {name: (enc / name).read_bytes() for name in files_under(enc)}
    assert main(["diffuse", "--from", str(enc), *flags]) == 0
    assert {name: (enc / name).read_bytes() for name in files_under(enc)} == encoded  # read only
    captured = capsys.readouterr()
    assert "guarantee: epsilon" in captured.out
    assert "metrics (custodian-only, read real data): accuracy" in captured.out
    assert "tdpdm: error" not in captured.err

    # The CLI names both parts, and every path it prints exists.
    diff = tmp_path / "diff"
    printed = {
        "release (covered by the guarantee)": diff / "release",
        "synthetic data": diff / "release" / "synthetic" / "part-0.parquet",
        "sample grid": diff / "release" / "samples.png",
        "custodian only (never publish)": diff / "custodian",
    }
    lines = [line.strip() for line in captured.out.splitlines()]
    for label, path in printed.items():
        shown = [line.split()[-1] for line in lines if line.startswith(f"{label}:")]
        assert shown == [str(path)], (label, captured.out)
        assert path.exists(), path
    reports = [line.split()[-1] for line in lines if line.startswith("report:")]
    assert reports == [
        str(diff / "release" / "report.html"),
        str(diff / "custodian" / "report.html"),
    ]
    assert all(Path(r).is_file() for r in reports)

    report = json.loads((diff / "release" / "report.json").read_text())
    validate_report(report)
    assert all(v is None for v in report["metrics"].values())  # nothing read from real data
    custodian = json.loads((diff / "custodian" / "report.json").read_text())
    validate_report(custodian)
    assert 0.0 <= custodian["metrics"]["accuracy"] <= 1.0
    assert_run_parts(
        diff, release=RUN_RELEASE_FILES, custodian=RUN_CUSTODIAN_FILES | {"evaluation.json"}
    )
    p = report["privacy"]
    assert [(e["kind"], e["stage"]) for e in p["events"]] == [
        ("poisson_gaussian", "encoder"),
        ("poisson_gaussian", "diffusion"),
    ]
    assert p["events"][0] == manifest["events"][0]  # stage 1 is not re-run or re-charged
    assert after_encode < p["epsilon"] <= 8.0
    assert p["adjacency"] == "add_remove"
    fresh = compute_epsilon([event_from_dict(e) for e in p["events"]], 1e-5, "add_remove")
    assert p["epsilon"] == pytest.approx(fresh.epsilon, rel=1e-9)

    total = ledger.spent("mnist").epsilon
    assert total <= 10.0
    assert total == pytest.approx(p["budget"]["spent_epsilon_after_run"], rel=1e-9)
    assert total == pytest.approx(p["epsilon"], rel=1e-9)  # two stages, nothing else spent
    charges = ledger.charges("mnist")
    assert [c.status for c in charges] == ["settled", "settled"]
