"""Issue 11, findings 2, 3, 5 and 6 on real (tiny) pipeline runs: the release part holds only
covered artefacts and no generator state, stages draw independent keys, nothing unnoised is
published by default, and a failure after reading records is never refunded.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from tdpdm_test_support import tiny_run_overrides

from tdpdm.config import load_config
from tdpdm.data.errors import DataError
from tdpdm.pipeline import run_pipeline
from tdpdm.privacy.ledger import Ledger
from tdpdm.stages.artifacts import RunLayout, release_listing

GENERATOR_STATE_BYTES = 5056  # torch's CPU (mt19937) generator state


def _overrides(root: Path, data_dir: Path) -> dict:
    return tiny_run_overrides(
        root,
        data_dir,
        "private",
        subset=None,
        seed=0,
        settings={"stage2.epochs": 2, "stage2.batch_size": 128, "evaluation.synthetic_count": 100},
    )


# `private_run` (tests/conftest.py): the tiny private run tests/pipeline reads too, every
# mechanism key it drew recorded (values stay in memory).


def test_each_mechanism_draws_its_own_key(private_run):
    drawn = private_run.drawn
    purposes = [p for p, _ in drawn]
    for needed in ("subset", "stage1-dpsgd", "stage2-dpsgd", "latents-order"):
        assert needed in purposes
    keys = [k for _, k in drawn]
    assert len(set(keys)) == len(keys), "two mechanisms shared a key"


def test_outputs_are_split_into_release_and_custodian(private_run):
    out = private_run.out
    assert sorted(os.listdir(out)) == ["custodian", "release"]
    release = out / "release"
    written = {str(p.relative_to(release)) for p in release.rglob("*") if p.is_file()}
    assert written == set(release_listing("private").values())
    assert not (out / "custodian" / "work").exists(), "checkpoints must go when the run succeeds"
    assert (out / "custodian" / "latents" / "latents.parquet").is_file()  # private latents
    for p in (out / "custodian").rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    for p in release.rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) & 0o044, f"{p} is not readable by others"


def test_no_generator_state_in_the_release(private_run):
    """Finding 2: DP-SGD checkpoints (every rank's noise and sampler state) sat in <out>/ray."""
    for path in private_run.release.rglob("*.pt"):
        state = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
        assert isinstance(state, dict)
        for name, value in state.items():
            assert "rng" not in name and "generator" not in name, (path, name)
            assert isinstance(value, torch.Tensor) and value.is_floating_point(), (path, name)
            assert value.numel() != GENERATOR_STATE_BYTES or value.dtype != torch.uint8


def test_release_report_carries_nothing_unnoised(private_run):
    """Finding 5 and 8: no loss, no metric read from real data in the release report."""
    layout = RunLayout(str(private_run.out))
    text = Path(layout.release("report.json")).read_text()
    report = json.loads(text)
    assert set(report["metrics"].values()) == {None}
    assert _numeric_losses(report) == []
    privacy = report["privacy"]
    assert "fresh OS entropy" in privacy["randomness"]
    assert any("custodian/work" in item for item in privacy["not_covered"])
    assert any("subset" in item for item in privacy["not_covered"])
    custodian = json.loads(Path(layout.custodian("report.json")).read_text())
    assert custodian["privacy"] == privacy
    assert "training_losses" not in custodian  # not opted in


def _numeric_losses(node, path: str = "") -> list[str]:
    """Every key naming a loss that carries a number (the old report's `final_loss`, Ray's
    per-step `loss`); flags such as `custodian_losses: false` are fine."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            numeric = isinstance(value, (int, float, dict, list)) and not isinstance(value, bool)
            if "loss" in key.lower() and numeric:
                found.append(where)
            found += _numeric_losses(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _numeric_losses(value, f"{path}[{i}]")
    return found


def _bad_label_data(root: Path, data_dir: Path) -> Path:
    """A copy of 400 MNIST training records with one label out of range, as IDX files."""
    from tdpdm.data.loader import load_split

    images, labels = load_split("mnist", str(data_dir), "train")
    images, labels = images[:400], labels[:400].copy()
    labels[123] = 11
    folder = root / "bad" / "mnist"
    folder.mkdir(parents=True)

    def idx(arr: np.ndarray) -> bytes:
        head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(
            int(d).to_bytes(4, "big") for d in arr.shape
        )
        return head + arr.astype(np.uint8).tobytes()

    for split, (x, y) in {
        "train": (images, labels),
        "t10k": (images[:50], labels[:50] % 10),
    }.items():
        (folder / f"{split}-images-idx3-ubyte").write_bytes(idx(x))
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(idx(y))
    return root / "bad"


def test_a_failure_after_reading_is_charged_its_full_plan(tmp_path, shared_datasets):
    """Finding 6: load_split raised on bad labels after reading everything, and the charge was
    cancelled as 'failed before reading any record' (a refund after a read)."""
    data_dir = _bad_label_data(tmp_path, shared_datasets)
    cfg = load_config(None, _overrides(tmp_path, data_dir))
    with pytest.raises(DataError) as raised:
        run_pipeline(cfg, log=lambda m: None)
    message = str(raised.value)
    assert "out of range" in message
    # no position or value; the file's path is not data (pytest's tmp path may hold "11" itself)
    told = message.replace(str(tmp_path), "").replace("idx1", "")
    assert "123" not in told and "11" not in told
    ledger = Ledger(cfg.ledger)
    (charge,) = ledger.charges("mnist")
    assert charge.status != "cancelled"
    assert ledger.spent("mnist").epsilon > 9.0  # the full plan (target 10) is counted
    assert not Path(cfg.out, "release").exists()
