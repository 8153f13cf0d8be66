"""Hostile input end to end through `tdpdm.cli.main`: each case fails with one `tdpdm: error:`
line and the exit code `_classify` gives user errors (2), and leaves the ledger file and the
output folder exactly as they were (bytes and listing compared before and after).

The one exception is stated where it happens: labels out of range can only be seen by reading
the labels, which are private, so that check runs under a charge. A failure after records were
read is itself an observation of them (whether and how it fails can depend on the records), so
the charge is settled at its full plan: the spent epsilon grows by the whole plan, and no output
is written. The error line withholds how many labels are bad, where, and their values.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzz_support import TRAIN_RECORDS, clean_arrays, idx_bytes, write_split

from tdpdm.cli import EXIT_USER_ERROR, main
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.events import event_to_dict
from tdpdm.privacy.ledger import Ledger

pytestmark = pytest.mark.timeout(600)


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file under `roots` with its bytes; a missing root is recorded as None."""
    out: dict[str, bytes | None] = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = None
        elif root.is_file():
            out[str(root)] = root.read_bytes()
        else:
            for path in sorted(root.rglob("*")):
                out[str(path)] = path.read_bytes() if path.is_file() else b"<dir>"
    return out


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    """A ledger with a budget set, and an output folder holding an earlier run's file."""
    ledger = tmp_path / "ledger.json"
    Ledger(str(ledger)).set_budget("mnist", 8.0, 1e-5, "add_remove")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier-run.txt").write_text("must survive")
    return {"ledger": ledger, "out": out}


def run_flags(data_dir: Path, ws: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--dataset",
        "mnist",
        "--mode",
        "private",
        "--data-dir",
        str(data_dir),
        "--ledger",
        str(ws["ledger"]),
        "--out",
        str(ws["out"]),
        "--cache-dir",
        str(ws["out"].parent / "cache"),
        "--no-progress",
        "--set",
        "distributed.backend=local",
        *extra,
    ]


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and exactly one error line, last on stderr; return it."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR, err
    assert "Traceback" not in err
    assert [line for line in lines if line.startswith("tdpdm: error:")] == [lines[-1]], err
    assert len(lines[-1]) < 400, lines[-1]
    return lines[-1]


def _float_images_with_nan(n: int) -> bytes:
    pixels = np.random.default_rng(0).random((n, 28, 28)).astype(">f4")
    pixels[0, 0, 0], pixels[1, 5, 5], pixels[2, 9, 9] = np.nan, np.inf, -np.inf
    return idx_bytes(0x0D, (n, 28, 28), pixels.tobytes())


HEADER_CASES = {
    "nan-inf-pixels": (
        lambda n, labels: (_float_images_with_nan(n), labels),
        "expected uint8 pixels",
    ),
    "empty-data-set": (
        lambda n, labels: (idx_bytes(0x08, (0, 28, 28), b""), labels[:0]),
        "size zero",
    ),
    "wrong-image-size": (
        lambda n, labels: (idx_bytes(0x08, (n, 32, 32), bytes(n * 32 * 32)), labels),
        "image shape (32, 32)",
    ),
    "count-mismatch": (
        lambda n, labels: (idx_bytes(0x08, (n, 28, 28), bytes(n * 784)), labels[:-1]),
        "count mismatch",
    ),
    "huge-declared-count": (
        lambda n, labels: (idx_bytes(0x08, (2**32 - 1, 28, 28), b""), labels),
        "absurd size",
    ),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_malformed_training_set_is_refused_before_any_charge(
    case: str, tiny_mnist: Path, workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    build, problem = HEADER_CASES[case]
    images, labels = build(TRAIN_RECORDS, np.arange(TRAIN_RECORDS) % 10)
    write_split(tiny_mnist, "train", images, labels)
    before = snapshot(workspace["ledger"], workspace["out"], tiny_mnist)
    line = refused(capsys, ["run", *run_flags(tiny_mnist, workspace, "--epsilon", "4")])
    assert problem in line and "train-" in line
    assert snapshot(workspace["ledger"], workspace["out"], tiny_mnist) == before


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--epsilon", "0"], "epsilon must be a positive"),
        (["--epsilon", "-1"], "epsilon must be a positive"),
        (["--epsilon", "nan"], "epsilon"),
        (["--epsilon", "4", "--delta", "1"], "delta must be in (0, 1)"),
        (["--epsilon", "4", "--set", "stage1.epochs=-2"], "stage1.epochs must be positive"),
        (["--epsilon", "4", "--subset", "-5"], "subset"),
    ],
)
def test_impossible_settings_are_refused(
    flags: list[str],
    problem: str,
    tiny_mnist: Path,
    workspace: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = snapshot(workspace["ledger"], workspace["out"])
    line = refused(capsys, ["run", *run_flags(tiny_mnist, workspace, *flags)])
    assert problem in line
    assert snapshot(workspace["ledger"], workspace["out"]) == before


@pytest.mark.parametrize(
    ("flag", "uri", "problem"),
    [
        ("--data-dir", "http://mirror.example/mnist", "unsupported URI scheme 'http'"),
        ("--data-dir", "file://remote.example/data", "must not name a remote host"),
        ("--out", "ftp://host/out", "unsupported URI scheme 'ftp'"),
        ("--out", "runs/\x00out", "NUL byte"),
        ("--ledger", "gopher://host/ledger.json", "not supported"),
    ],
)
def test_unexpected_uris_are_refused_before_any_charge(
    flag: str,
    uri: str,
    problem: str,
    tiny_mnist: Path,
    workspace: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = snapshot(workspace["ledger"], workspace["out"])
    argv = ["run", *run_flags(tiny_mnist, workspace, "--epsilon", "4"), flag, uri]
    line = refused(capsys, argv)
    assert problem in line
    assert snapshot(workspace["ledger"], workspace["out"]) == before


@pytest.mark.parametrize("ledger_exists", [True, False])
def test_delta_at_least_one_over_n_is_refused(
    ledger_exists: bool,
    tiny_mnist: Path,
    workspace: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """delta >= 1/n would allow publishing a record outright: refused whether the delta comes
    from an existing budget or from a run that would set the budget."""
    if ledger_exists:
        workspace["ledger"].unlink()
        Ledger(str(workspace["ledger"])).set_budget("mnist", 8.0, 0.01, "add_remove")
    else:
        workspace["ledger"].unlink()
    before = snapshot(workspace["ledger"], workspace["out"])
    flags = ["--epsilon", "4", "--delta", "0.01", "--subset", str(TRAIN_RECORDS)]
    line = refused(capsys, ["run", *run_flags(tiny_mnist, workspace, *flags)])
    assert "1/n" in line and f"n={TRAIN_RECORDS}" in line
    assert snapshot(workspace["ledger"], workspace["out"]) == before


def _encoded_dir(root: Path, checkpoint: bytes) -> Path:
    """What `tdpdm encode` leaves (private mode), with `checkpoint` as the autoencoder's bytes:
    the DP weights in the release part, the manifest and the private latents in the
    custodian part."""
    from_dir = root / "encoded"
    (from_dir / "release" / "models").mkdir(parents=True)
    (from_dir / "custodian" / "latents").mkdir(parents=True)
    (from_dir / "release" / "models" / "autoencoder.pt").write_bytes(checkpoint)
    manifest = {
        "dataset": "mnist",
        "mode": "private",
        "job_id": "enc-1",
        "n_records": TRAIN_RECORDS,
        "seed": 0,
        "latent_dim": 8,
        "width": 8,
        "events": [
            {"kind": "poisson_gaussian", "noise_multiplier": 2.0, "sampling_rate": 0.1, "steps": 5}
        ],
        "guarantee": {},
        "stages": [],
    }
    (from_dir / "custodian" / "stage1.json").write_text(json.dumps(manifest))
    return from_dir


def _foreign_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"not.a.layer": torch.zeros(3)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "checkpoint",
    [b"garbage, not a checkpoint" * 10, b"", b"PK\x03\x04" + bytes(200), _foreign_checkpoint()],
    ids=["garbage", "empty", "broken-zip", "foreign-state-dict"],
)
def test_corrupted_checkpoint_for_diffuse(
    checkpoint: bytes,
    tiny_mnist: Path,
    workspace: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from_dir = _encoded_dir(workspace["out"].parent, checkpoint)
    before = snapshot(workspace["ledger"], workspace["out"], from_dir)
    argv = ["diffuse", *run_flags(tiny_mnist, workspace, "--epsilon", "6"), "--from", str(from_dir)]
    line = refused(capsys, argv)
    assert "release/models/autoencoder.pt" in line and "not a readable checkpoint" in line
    assert snapshot(workspace["ledger"], workspace["out"], from_dir) == before


def test_labels_out_of_range_settle_the_charge_at_its_full_plan(
    tiny_mnist: Path, workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = clean_arrays(TRAIN_RECORDS, 0)
    labels = labels.copy()
    labels[[3, 77]] = [10, 255]
    write_split(tiny_mnist, "train", images, labels)
    out_before = snapshot(workspace["out"])
    ledger = Ledger(str(workspace["ledger"]))
    spent_before = ledger.spent("mnist").epsilon
    flags = ["--epsilon", "4", "--set", "stage1.epochs=1", "--set", "stage2.epochs=1"]
    line = refused(capsys, ["run", *run_flags(tiny_mnist, workspace, *flags)])
    assert "labels out of range [0, 10)" in line and "train-labels" in line
    assert "withheld" in line
    # Nothing about the private labels: not how many, not where, not their values.
    message = line.split("labels out of range [0, 10)", 1)[1]
    assert not any(ch.isdigit() for ch in message), line
    assert "2 labels" not in line and "255" not in line
    assert snapshot(workspace["out"]) == out_before  # no output, in either part
    # The labels were read (that is how the failure was seen), so the failure is charged: the
    # charge is settled at its full plan, not cancelled, and the spent epsilon grows by the
    # whole plan (before issue 11 it was refunded and the spend stayed unchanged).
    [charge] = ledger.charges("mnist")
    assert charge.status == "settled"
    assert [event_to_dict(e) for e in charge.counted_events()] == [
        event_to_dict(e) for e in charge.planned
    ]
    assert {e.stage for e in charge.planned} == {"encoder", "diffusion"}
    budget = ledger.budget("mnist")
    assert budget is not None
    plan_epsilon = compute_epsilon(charge.planned, budget.delta, budget.adjacency).epsilon
    spent_after = ledger.spent("mnist").epsilon
    assert spent_before == 0.0
    assert spent_after == pytest.approx(plan_epsilon, rel=1e-9)
    assert spent_after > spent_before


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        (b"{not json", "not a JSON manifest"),
        (b"\xff\xfe", "not a JSON manifest"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"dataset": "mnist", "mode": "private"}', "missing or invalid 'n_records'"),
        (
            b'{"dataset": "mnist", "mode": "private", "n_records": 300, "latent_dim": 8,'
            b' "width": 8, "events": [{"kind": "laplace"}]}',
            "invalid privacy event",
        ),
        (
            b'{"dataset": "mnist", "mode": "private", "n_records": 300, "latent_dim": 8,'
            b' "width": 8, "events": [{"kind": "gaussian", "noise_multiplier": -1}]}',
            "invalid privacy event",
        ),
    ],
)
def test_corrupted_manifest_for_diffuse(
    manifest: bytes,
    problem: str,
    tiny_mnist: Path,
    workspace: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from_dir = _encoded_dir(workspace["out"].parent, _foreign_checkpoint())
    (from_dir / "custodian" / "stage1.json").write_bytes(manifest)
    before = snapshot(workspace["ledger"], workspace["out"], from_dir)
    argv = ["diffuse", *run_flags(tiny_mnist, workspace, "--epsilon", "6"), "--from", str(from_dir)]
    line = refused(capsys, argv)
    assert "custodian/stage1.json" in line and problem in line
    assert snapshot(workspace["ledger"], workspace["out"], from_dir) == before
