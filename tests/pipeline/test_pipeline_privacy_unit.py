"""`--privacy-unit` end to end (tiny real runs on 300 Fashion-MNIST images): one person owns
120 of them, everyone else one. The run bounds every unit to k records by a secret choice made
before stage 1 reads anything, plans so that the guarantee per unit meets the target, and the
report states the unit, k and the unit-level epsilon (the group conversion of the accountant's
record-level figure). Mixing units on one budget is refused before any charge."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tdpdm_test_support import tiny_run_overrides, tiny_run_sets, torch_threads

from tdpdm.cli import main
from tdpdm.config import load_config
from tdpdm.data.loader import load_split
from tdpdm.data.sources import ArraySource
from tdpdm.pipeline import run_pipeline
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import event_from_dict
from tdpdm.privacy.ledger import Ledger
from tdpdm.privacy.units import UnitError
from tdpdm.report.text import epsilon_text
from tdpdm.stages.context import training_set

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RECORDS, MANY = 300, 120
CLASSES = [f"c{i}" for i in range(10)]
EPSILON, DELTA = 20.0, 1e-4


@pytest.fixture(scope="module")
def people(shared_datasets: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels, and units: unit 0 owns the first MANY images, the rest one each."""
    images, labels = load_split("fashion-mnist", str(shared_datasets), "train")
    units = np.r_[np.zeros(MANY, int), np.arange(1, RECORDS - MANY + 1)]
    return images[:RECORDS], labels[:RECORDS], units


def config(tmp_path: Path, k: int, name: str = "people", **extra):
    base = tiny_run_overrides(tmp_path, "unused", subset=None, epsilon=EPSILON, delta=DELTA)
    base.update(
        {
            "dataset": name,
            "privacy_unit": "units",
            "records_per_unit": k,
            "stage2.private_model": "dp-moments",
            "evaluation.synthetic_count": 100,
            **extra,
        }
    )
    return load_config(None, base)


def run(tmp_path: Path, people, k: int, **extra):
    cfg = config(tmp_path, k, **extra)
    source = ArraySource(people[0], people[1], CLASSES, name=cfg.dataset, units=people[2])
    records = training_set(cfg, "(arrays)", source)
    with torch_threads(1):
        result = run_pipeline(cfg, log=lambda _: None, records=records)
    return cfg, result, records


def test_a_unit_with_many_images_is_bounded_and_the_guarantee_is_per_unit(
    tmp_path: Path, people
) -> None:
    cfg, result, records = run(tmp_path, people, k=2)
    kept = np.bincount(records._kept_units)  # custodian-side hook: never printed or written
    assert kept[0] == 2 and kept.max() == 2 and kept.sum() == 2 + RECORDS - MANY
    report = json.loads((Path(cfg.out) / "release" / "report.json").read_text())
    privacy = report["privacy"]
    assert privacy["unit"]["by"] == "units" and privacy["unit"]["records_per_unit"] == 2
    assert "one privacy unit" in privacy["adjacency_words"]
    assert privacy["statement"].startswith(f"({epsilon_text(privacy['epsilon'])}, {DELTA:g})")
    assert "each privacy unit (units)" in privacy["statement"]
    assert "at most 2" in privacy["statement"]
    # The printed epsilon is the group conversion of the accountant's record-level figure.
    events = [event_from_dict(e) for e in privacy["events"]]
    record = compute_epsilon(events, privacy["unit"]["record_delta"], Adjacency.ADD_REMOVE)
    assert privacy["unit"]["record_epsilon"] == pytest.approx(record.epsilon)
    assert privacy["epsilon"] == pytest.approx(2 * record.epsilon)
    assert privacy["epsilon"] <= EPSILON and privacy["delta"] == DELTA
    assert result.epsilon == pytest.approx(privacy["epsilon"])
    ledger = Ledger(cfg.ledger)
    assert ledger.budget("people").unit.k == 2
    assert ledger.spent("people").epsilon == pytest.approx(privacy["epsilon"], rel=0.02)
    assert any("privacy unit" in item for item in privacy["not_covered"])
    # The public count (before bounding) is what the report states, not the bounded one.
    assert report["n_records"] == RECORDS

    # Another k (or no unit) on the same budget: refused, one line, nothing charged.
    for other in (3, None):
        extra = {"records_per_unit": 1, "privacy_unit": None} if other is None else {}
        with pytest.raises(UnitError, match="different units") as err:
            run(tmp_path, people, k=other or 1, **extra)
        assert "\n" not in str(err.value)
    assert len(ledger.charges("people")) == 1


def test_more_records_per_unit_means_more_noise(tmp_path: Path, people) -> None:
    noise = {}
    for k in (1, 3):
        _, result, records = run(tmp_path / f"k{k}", people, k=k)
        assert np.bincount(records._kept_units).max() <= k
        events = [event_from_dict(e) for e in result.report["privacy"]["events"]]
        noise[k] = [e.noise_multiplier for e in events]
        assert result.report["privacy"]["epsilon"] <= EPSILON
    assert all(b > a for a, b in zip(noise[1], noise[3], strict=True))


def parquet_with_people(path: Path, images, labels, people: list[str]) -> Path:
    def png(image) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        return buf.getvalue()

    struct = pa.array(
        [{"bytes": png(im), "path": f"{i}.png"} for i, im in enumerate(images)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    table = pa.table({"image": struct, "label": pa.array(labels, pa.int64()), "person": people})
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": CLASSES}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def test_a_parquet_column_is_the_unit_on_the_command_line(tmp_path: Path, people, capsys) -> None:
    images, labels, units = people
    path = parquet_with_people(
        tmp_path / "faces.parquet", images, labels, [f"person-{u}" for u in units]
    )
    flags = [
        "run", "--data", str(path), "--epsilon", str(EPSILON), "--delta", str(DELTA),
        "--subset", "all", "--ledger", str(tmp_path / "ledger.json"), "--no-progress",
        *tiny_run_sets(), "--set", "stage2.private_model=dp-moments",
        "--set", "evaluation.synthetic_count=100",
    ]  # fmt: skip
    missing = [*flags, "--out", str(tmp_path / "a"), "--privacy-unit", "email"]
    assert main(missing) == 2
    err = capsys.readouterr().err.strip()
    assert "no such column" in err and "\n" not in err and "person-" not in err
    assert not (tmp_path / "ledger.json").exists()
    out = tmp_path / "b"
    ok = [*flags, "--out", str(out), "--privacy-unit", "person", "--records-per-unit", "2"]
    with torch_threads(1):
        assert main(ok) == 0
    printed = capsys.readouterr()
    assert "person-" not in printed.out + printed.err
    privacy = json.loads((out / "release" / "report.json").read_text())["privacy"]
    assert privacy["unit"] | {} and privacy["unit"]["by"] == "person"
    assert "each privacy unit (person)" in privacy["statement"]
    assert privacy["epsilon"] <= EPSILON
    table = pq.read_table(out / "release" / "synthetic" / "part-0.parquet")
    stamp = json.loads(table.schema.metadata[b"tdpdm"])
    assert stamp["unit"]["records_per_unit"] == 2 and stamp["epsilon"] == privacy["epsilon"]
