"""Hostile input end to end through `tdpdm.cli.main`: each case fails with one `tdpdm: error:`
line and the exit code `_classify` gives user errors (2), and leaves the ledger file and the
output folder exactly as they were (bytes and listing compared before and after).

The one exception is stated where it happens: labels out of range can only be seen by reading
the labels, which are private, so that check runs under a charge; the charge is then cancelled
and nothing is counted against the budget (spent epsilon unchanged), but the ledger file does
record the cancelled charge.
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
    """What `tdpdm encode` leaves, with `checkpoint` as the autoencoder's bytes."""
    from_dir = root / "encoded"
    (from_dir / "checkpoints").mkdir(parents=True)
    (from_dir / "latents").mkdir()
    (from_dir / "checkpoints" / "autoencoder.pt").write_bytes(checkpoint)
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
    (from_dir / "stage1.json").write_text(json.dumps(manifest))
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
    assert "autoencoder.pt" in line and "not a readable checkpoint" in line
    assert snapshot(workspace["ledger"], workspace["out"], from_dir) == before


def test_labels_out_of_range_cancel_the_charge_and_count_nothing(
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
    assert "2 labels out of range [0, 10)" in line and "train-labels" in line
    assert snapshot(workspace["out"]) == out_before
    assert ledger.spent("mnist").epsilon == spent_before
    charges = ledger.charges("mnist")
    assert [c.status for c in charges] == ["cancelled"]
    assert charges[0].counted_events() == []


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
    (from_dir / "stage1.json").write_bytes(manifest)
    before = snapshot(workspace["ledger"], workspace["out"], from_dir)
    argv = ["diffuse", *run_flags(tiny_mnist, workspace, "--epsilon", "6"), "--from", str(from_dir)]
    line = refused(capsys, argv)
    assert "stage1.json" in line and problem in line
    assert snapshot(workspace["ledger"], workspace["out"], from_dir) == before
