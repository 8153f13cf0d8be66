"""`tdpdm` commands: budgets, and every failure as one line on stderr with the right exit code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import assert_one_line_error
from tdpdm_test_support import set_flags

from tdpdm.cli import main
from tdpdm.privacy.ledger import Ledger


def run_flags(tmp_path: Path, data_dir: Path | str, *extra: str) -> list[str]:
    return [
        "run",
        "--data-dir",
        str(data_dir),
        "--ledger",
        str(tmp_path / "ledger.json"),
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
        *extra,
    ]


# -- budget -----------------------------------------------------------------------------------


def test_budget_set_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = str(tmp_path / "ledger.json")
    code = main(
        [
            "budget",
            "set",
            "--ledger",
            ledger,
            "--dataset",
            "mnist",
            "--epsilon",
            "7.25",
            "--delta",
            "1e-6",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "7.25" in out and "mnist" in out
    stored = Ledger(ledger).budget("mnist")
    assert stored is not None and stored.epsilon == 7.25 and stored.delta == 1e-6
    assert stored.adjacency.value == "add_remove"  # the default

    assert main(["budget", "show", "--ledger", ledger, "--dataset", "mnist"]) == 0
    shown = capsys.readouterr()
    assert "7.25" in shown.out and "add_remove" in shown.out
    assert "spent epsilon 0.000" in shown.out
    assert shown.err == ""

    assert main(["budget", "show", "--ledger", ledger, "--dataset", "mnist", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dataset"] == "mnist"
    assert data["budget"] == {"epsilon": 7.25, "delta": 1e-6, "adjacency": "add_remove"}
    assert data["spent_epsilon"] == 0.0
    assert data["remaining_epsilon"] == 7.25
    assert data["charges"] == []


def test_budget_show_lists_charges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tdpdm.privacy.events import GaussianEvent

    ledger_path = str(tmp_path / "ledger.json")
    ledger = Ledger(ledger_path)
    ledger.set_budget("mnist", 10.0, 1e-5, "replace_one")
    charge = ledger.reserve("mnist", "job-42", [GaussianEvent(3.0, 1, "latent_release")])
    assert main(["budget", "show", "--ledger", ledger_path, "--dataset", "mnist", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["budget"]["adjacency"] == "replace_one"
    assert 0 < data["spent_epsilon"] < 10
    assert data["remaining_epsilon"] == pytest.approx(10 - data["spent_epsilon"])
    assert [c["charge_id"] for c in data["charges"]] == [charge.charge_id]
    assert main(["budget", "show", "--ledger", ledger_path, "--dataset", "mnist"]) == 0
    text = capsys.readouterr().out
    assert "job-42" in text and "open" in text and "latent_release" in text


def test_budget_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = str(tmp_path / "ledger.json")
    assert main(["budget", "show", "--ledger", ledger, "--dataset", "mnist"]) == 2
    assert "no privacy budget" in assert_one_line_error(capsys.readouterr().err)
    assert main(["budget", "set", "--ledger", ledger, "--dataset", "mnist", "--epsilon", "1"]) == 2
    assert "--delta" in assert_one_line_error(capsys.readouterr().err)
    code = main(
        [
            "budget",
            "set",
            "--ledger",
            ledger,
            "--dataset",
            "mnist",
            "--epsilon",
            "0",
            "--delta",
            "1e-5",
        ]
    )
    assert code == 2
    assert "epsilon" in assert_one_line_error(capsys.readouterr().err)
    assert not Path(ledger).exists()


def test_garbage_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "ledger.json"
    ledger.write_bytes(b"\x00\x01 this is not a ledger {")
    assert main(["budget", "show", "--ledger", str(ledger), "--dataset", "mnist"]) == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert str(ledger) in line and "JSON" in line
    code = main(
        [
            "budget",
            "set",
            "--ledger",
            str(ledger),
            "--dataset",
            "mnist",
            "--epsilon",
            "1",
            "--delta",
            "1e-5",
        ]
    )
    assert code == 2
    assert_one_line_error(capsys.readouterr().err)
    assert ledger.read_bytes() == b"\x00\x01 this is not a ledger {"


# -- argument and configuration errors --------------------------------------------------------


def test_unknown_dataset_is_an_argparse_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(run_flags(tmp_path, tmp_path, "--dataset", "cifar10"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "cifar10" in err


def test_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(run_flags(tmp_path, "/nonexistent")) == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert "/nonexistent" in line
    assert not (tmp_path / "ledger.json").exists()


@pytest.mark.parametrize("epsilon", ["0", "-3", "nan", "inf"])
def test_non_positive_epsilon(
    tmp_path: Path, shared_datasets: Path, capsys: pytest.CaptureFixture[str], epsilon: str
) -> None:
    assert main(run_flags(tmp_path, shared_datasets, f"--epsilon={epsilon}")) == 2
    assert "epsilon" in assert_one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "ledger.json").exists()


def test_delta_not_below_one_over_n(
    tmp_path: Path, shared_datasets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(run_flags(tmp_path, shared_datasets, "--delta", "0.01", "--subset", "1000"))
    assert code == 2
    # The run logs its plan first; the failure is still one line, the last one.
    line = assert_one_line_error(capsys.readouterr().err, only_line=False)
    assert "1/n" in line and "0.01" in line


def test_infeasible_run_leaves_no_budget_behind(
    tmp_path: Path, shared_datasets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run_flags(tmp_path, shared_datasets, "--delta", "0.01", "--subset", "1000")) == 2
    capsys.readouterr()
    assert Ledger(str(tmp_path / "ledger.json")).budget("mnist") is None


def test_bad_yaml_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("epsilon: [1, 2\nmode: private\n")
    assert main(run_flags(tmp_path, tmp_path, "--config", str(config))) == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert "YAML" in line and "bad.yaml" in line


def test_config_file_that_is_not_a_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "list.yaml"
    config.write_text("- 1\n- 2\n")
    assert main(run_flags(tmp_path, tmp_path, "--config", str(config))) == 2
    assert "mapping" in assert_one_line_error(capsys.readouterr().err)


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(run_flags(tmp_path, tmp_path, "--config", str(tmp_path / "nope.yaml"))) == 2
    assert "nope.yaml" in assert_one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    "item, needle",
    [
        ("stage2.bogus=1", "stage2.bogus"),
        ("bogus=1", "bogus"),
        ("stage2.epochs=many", "stage2.epochs"),
        ("stage2.epochs", "KEY=VALUE"),
        ("stage1.epsilon_fraction=1.5", "epsilon_fraction"),
    ],
)
def test_bad_set_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], item: str, needle: str
) -> None:
    assert main(run_flags(tmp_path, tmp_path, *set_flags(item))) == 2
    assert needle in assert_one_line_error(capsys.readouterr().err)


def test_evaluate_on_a_file_that_is_not_parquet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "synthetic.parquet"
    bogus.write_text("id,label\n1,2\n")
    assert main(["evaluate", "--synthetic", str(bogus)]) == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert "Parquet" in line and "synthetic.parquet" in line


def test_evaluate_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--synthetic", str(tmp_path / "none.parquet")]) != 0
    assert "none.parquet" in assert_one_line_error(capsys.readouterr().err)


# -- refusals ---------------------------------------------------------------------------------


def test_over_budget_run_exits_3(
    tmp_path: Path, shared_datasets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "ledger.json"
    code = main(
        [
            "budget",
            "set",
            "--ledger",
            str(ledger),
            "--dataset",
            "mnist",
            "--epsilon",
            "0.5",
            "--delta",
            "1e-5",
            "--adjacency",
            "replace_one",
        ]
    )
    assert code == 0
    capsys.readouterr()
    before = ledger.read_bytes()
    flags = run_flags(
        tmp_path, shared_datasets, "--mode", "released", "--epsilon", "10", "--subset", "1500"
    )
    assert main(flags) == 3
    line = assert_one_line_error(capsys.readouterr().err, only_line=False)
    assert "refused" in line and "epsilon=0.5" in line and "latent_release" in line
    assert ledger.read_bytes() == before
    assert not (tmp_path / "out").exists()


# -- the installed console script -------------------------------------------------------------


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("tdpdm")
    if not script.exists():
        found = shutil.which("tdpdm")
        if found is None:
            pytest.skip("the tdpdm console script is not installed")
        script = Path(found)
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    for command in ("run", "encode", "diffuse", "sample", "budget", "evaluate"):
        assert command in done.stdout
    version = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert version.returncode == 0 and version.stdout.startswith("tdpdm ")
