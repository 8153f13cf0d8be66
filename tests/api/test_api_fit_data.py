"""`Synthesizer.fit` on every input kind, as tiny real runs: arrays with labels, an unlabelled
float tensor, and a `pathlib.Path` of an `.npz` file. Each is charged under its own ledger name
and released like the built-ins (the refusals of bad input are in test_api_inputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tdpdm_test_support import tiny_run_overrides, torch_threads

import tdpdm
from tdpdm.data.loader import load_split
from tdpdm.privacy.ledger import Ledger

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RECORDS = 300
CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def fashion(shared_datasets: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_split("fashion-mnist", str(shared_datasets), "train")
    return images[:RECORDS], labels[:RECORDS]


def synthesizer(tmp_path: Path) -> tdpdm.Synthesizer:
    settings = tiny_run_overrides(tmp_path, "unused", subset=None, delta=1e-4)
    for key in ("dataset", "data_dir", "out", "ledger", "mode", "epsilon", "delta", "seed"):
        del settings[key]
    settings.update({"stage2.private_model": "dp-moments", "evaluation.synthetic_count": 100})
    return tdpdm.Synthesizer(
        epsilon=10,
        delta=1e-4,
        ledger=tmp_path / "ledger.json",
        out=tmp_path / "out",
        settings=settings,
        log=None,
    )


def check_charged(tmp_path: Path, synth: tdpdm.Synthesizer, name: str) -> None:
    [charge] = Ledger(str(tmp_path / "ledger.json")).charges(name)
    assert charge.status == "settled"
    assert synth.report["dataset"] == name and synth.report["n_records"] == RECORDS
    assert synth.epsilon <= 10 and "differential privacy" in synth.guarantee


def test_fit_labelled_arrays(tmp_path: Path, fashion) -> None:
    images, labels = fashion
    synth = synthesizer(tmp_path)
    with torch_threads(1):
        synth.fit((images, labels), name="my-arrays", class_names=CLASSES)
    check_charged(tmp_path, synth, "my-arrays")
    out, out_labels = synth.sample(20, seed=0)
    assert out.shape == (20, 28, 28) and out.dtype == np.uint8
    assert set(out_labels.tolist()) <= set(range(10))
    assert synth.run.table(out, out_labels, seed=0).num_rows == 20


def test_fit_unlabelled_float_tensor(tmp_path: Path, fashion) -> None:
    tensor = torch.from_numpy(fashion[0]).float() / 255.0
    synth = synthesizer(tmp_path)
    with torch_threads(1):
        synth.fit(tensor, name="tensor-data")
    check_charged(tmp_path, synth, "tensor-data")
    _, out_labels = synth.sample(10, seed=0)
    assert out_labels.tolist() == [0] * 10


def test_fit_a_path(tmp_path: Path, fashion) -> None:
    images, labels = fashion
    path = tmp_path / "Shirts.npz"
    np.savez(path, images=images, labels=labels)
    synth = synthesizer(tmp_path)
    with torch_threads(1):
        synth.fit(path, class_names=CLASSES)
    check_charged(tmp_path, synth, "shirts")
    assert synth.cfg.data == path.as_posix() and synth.cfg.classes == tuple(CLASSES)
    assert json.loads(json.dumps(synth.report))["dataset"] == "shirts"


def test_fit_arrays_per_person(tmp_path: Path, fashion) -> None:
    """`units=`: one person owns half the images; the guarantee is per person, k = 2."""
    images, labels = fashion
    units = np.r_[np.zeros(RECORDS // 2, int), np.arange(1, RECORDS // 2 + 1)]
    synth = synthesizer(tmp_path)
    with torch_threads(1):
        synth.fit(
            (images, labels), name="people", class_names=CLASSES, units=units, records_per_unit=2
        )
    check_charged(tmp_path, synth, "people")
    unit = synth.report["privacy"]["unit"]
    assert (unit["by"], unit["records_per_unit"]) == ("units", 2)
    assert "each privacy unit" in synth.guarantee
    with pytest.raises(TypeError, match="goes with arrays"):
        synth.fit(tmp_path, units=units)
