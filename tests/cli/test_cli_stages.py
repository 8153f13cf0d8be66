"""`tdpdm encode` then `tdpdm diffuse` (private mode) against one ledger budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import TINY_SETS, set_flags

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
        *set_flags(*TINY_SETS),
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
    assert manifest == json.loads((tmp_path / "enc" / "stage1.json").read_text())
    assert [(e["kind"], e["stage"]) for e in manifest["events"]] == [
        ("poisson_gaussian", "encoder")
    ]
    assert 0 < manifest["guarantee"]["epsilon"] <= 3.0
    assert manifest["n_records"] == 1500
    assert (tmp_path / "enc" / "latents" / "latents.parquet").is_file()
    ledger = Ledger(ledger_path)
    after_encode = ledger.spent("mnist").epsilon
    assert after_encode == pytest.approx(manifest["guarantee"]["epsilon"], rel=1e-9)

    flags = stage_flags(tmp_path, shared_datasets, "diff", 8.0)
    assert main(["diffuse", "--from", str(tmp_path / "enc"), *flags]) == 0
    captured = capsys.readouterr()
    assert "guarantee: epsilon" in captured.out
    assert "tdpdm: error" not in captured.err

    report = json.loads((tmp_path / "diff" / "report.json").read_text())
    validate_report(report)
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
    assert (tmp_path / "diff" / "synthetic" / "part-0.parquet").is_file()
    assert (tmp_path / "diff" / "report.html").is_file()
