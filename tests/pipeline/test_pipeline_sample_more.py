"""`tdpdm sample --from RUN --n N` and `tdpdm.Synthesizer.load(RUN)`: more synthetic records
from a finished run, later, from its `release/` part alone (post-processing: no ledger charge,
no private record, no custodian file), in the run's own Parquet layout and guarantee metadata.

Both modes' shared tiny runs (`finished_run`): a diffusion denoiser (private) and a
deconvolved mixture (released) are rebuilt from their saved weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tdpdm_test_support import FinishedRun

from tdpdm.cli import main
from tdpdm.data import storage
from tdpdm.stages.resample import SAMPLE_METADATA, PublishedRun
from tdpdm.stages.synthetic_io import read_synthetic

pytestmark = pytest.mark.slow


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every URI read through `tdpdm.data.storage` (all of tdpdm's file reads go there)."""
    seen: list[str] = []
    real = storage.read_bytes

    def recording(uri: str, *args, **kwargs) -> bytes:
        seen.append(str(uri))
        return real(uri, *args, **kwargs)

    monkeypatch.setattr(storage, "read_bytes", recording)
    return seen


def _published_copy(run: FinishedRun, tmp_path: Path) -> Path:
    """The release part alone, as a user who received only it would hold it."""
    copy = tmp_path / "published"
    shutil.copytree(run.release, copy)
    return copy


def test_sample_cli_draws_more_records_from_the_release_alone(
    finished_run: FinishedRun, tmp_path: Path, reads: list[str], capsys
) -> None:
    ledger_before = finished_run.ledger.read_bytes()
    published = _published_copy(finished_run, tmp_path)
    out = tmp_path / "more.parquet"

    code = main(["sample", "--from", str(published), "--n", "50", "--out", str(out), "--seed", "3"])
    read_by_sample = list(reads)

    assert code == 0, capsys.readouterr().err
    images, labels, meta = read_synthetic(str(out))
    assert images.shape == (50, 28, 28) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() <= 9
    assert np.bincount(labels, minlength=10).min() == 5  # balanced, as the run's own sampler
    # The run's own guarantee metadata, unchanged; the draw's provenance beside it.
    _, _, own = read_synthetic(str(finished_run.release / "synthetic" / "part-0.parquet"))
    assert meta == own
    schema = pq.read_schema(out)
    own_schema = pq.read_schema(finished_run.release / "synthetic" / "part-0.parquet")
    assert schema.remove_metadata() == own_schema.remove_metadata()
    assert schema.metadata[b"huggingface"] == own_schema.metadata[b"huggingface"]
    provenance = json.loads(schema.metadata[SAMPLE_METADATA])
    assert provenance["count"] == 50 and provenance["seed"] == 3
    assert provenance["run_id"] == finished_run.report()["run_id"]
    # Free: no ledger change; nothing outside the published copy was read.
    assert finished_run.ledger.read_bytes() == ledger_before
    assert read_by_sample
    assert all(Path(uri).is_relative_to(published) for uri in read_by_sample), read_by_sample
    printed = capsys.readouterr().out
    assert "50 synthetic records (seed 3)" in printed
    assert finished_run.report()["privacy"]["statement"] in printed


def test_sample_from_run_folder_defaults_to_release_more(
    finished_run: FinishedRun, tmp_path: Path, reads: list[str]
) -> None:
    """`--from` the run's --out folder; only `release/` is read, the output lands in it."""
    run = _published_copy(finished_run, tmp_path)  # a writable copy shaped like <out>/release
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    run.rename(out_dir / "release")
    (out_dir / "custodian").mkdir()
    assert main(["sample", "--from", str(out_dir), "--n", "20", "--seed", "11"]) == 0
    assert reads and not any("custodian" in uri for uri in reads), reads
    written = out_dir / "release" / "more" / "sample-seed11-n20.parquet"
    images, labels, _ = read_synthetic(str(written))
    assert len(images) == len(labels) == 20


def test_sampling_is_repeatable_by_its_public_seed(finished_run: FinishedRun) -> None:
    run = PublishedRun.open(str(finished_run.out))
    a_images, a_labels = run.sample(30, seed=5)
    b_images, b_labels = run.sample(30, seed=5)
    c_images, _ = run.sample(30, seed=6)
    assert np.array_equal(a_images, b_images) and np.array_equal(a_labels, b_labels)
    assert not np.array_equal(a_images, c_images)
    assert run.class_names == [str(i) for i in range(10)]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            run.sample(bad, seed=1)


def test_synthesizer_load_sample_save_and_hf_layout(
    finished_run: FinishedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tdpdm

    ledger_before = finished_run.ledger.read_bytes()
    synth = tdpdm.Synthesizer.load(finished_run.out, log=None)
    assert synth.report == finished_run.report()
    assert synth.epsilon == finished_run.report()["privacy"]["epsilon"]
    assert synth.guarantee == finished_run.report()["privacy"]["statement"]
    images, labels = synth.sample(40, seed=1)
    assert images.shape == (40, 28, 28) and set(np.unique(labels)) <= set(range(10))

    saved = synth.save(tmp_path / "saved")
    assert sorted(p.name for p in Path(saved).iterdir()) == sorted(
        p.name for p in finished_run.release.iterdir()
    )
    again = tdpdm.Synthesizer.load(saved, log=None)
    assert np.array_equal(again.sample(40, seed=1)[0], images)

    path = again.to_parquet(tmp_path / "hf" / "part-0.parquet", n=40, seed=2)
    own = again.to_parquet(tmp_path / "own.parquet")
    assert (
        Path(own).read_bytes() == (finished_run.release / "synthetic/part-0.parquet").read_bytes()
    )
    assert finished_run.ledger.read_bytes() == ledger_before

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=path, split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert len(ds) == 40
    assert ds.features["image"] == datasets.Image()
    assert ds.features["label"].names == [str(i) for i in range(10)]
    assert ds[0]["image"].size == (28, 28)

    table = again.sample(12, seed=2, table=True)
    assert table.schema.metadata == pq.read_schema(path).metadata | {
        SAMPLE_METADATA: table.schema.metadata[SAMPLE_METADATA]
    }
    in_memory = datasets.Dataset(table)
    assert in_memory.features == ds.features and len(in_memory) == 12
