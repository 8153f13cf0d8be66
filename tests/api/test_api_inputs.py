"""`tdpdm.Synthesizer` and `tdpdm sample` on bad input: clear one-line errors, raised before
anything runs or is read (no data set, no ledger needed). The end-to-end uses are in
tests/pipeline/test_pipeline_sample_more.py and tests/api/test_api_readme.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tdpdm
from tdpdm.cli import main
from tdpdm.config import ConfigError
from tdpdm.data.errors import DataError
from tdpdm.stages.resample import load_stage2


def test_import_tdpdm_stays_light() -> None:
    """`import tdpdm` loads neither torch nor the pipeline; `tdpdm.Synthesizer` loads them."""
    code = (
        "import sys, tdpdm; assert 'torch' not in sys.modules, 'torch'; "
        "assert 'tdpdm.pipeline' not in sys.modules; tdpdm.Synthesizer; "
        "assert 'tdpdm.pipeline' in sys.modules; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    with pytest.raises(AttributeError):
        _ = tdpdm.NoSuchThing


def test_config_keys_are_checked_in_the_constructor(tmp_path: Path) -> None:
    synth = tdpdm.Synthesizer(
        epsilon=3,
        ledger=tmp_path / "ledger.json",
        out=tmp_path / "out",
        stage2={"epochs": 2},
        stage1__width=16,
        settings={"evaluation.synthetic_count": 100},
        log=None,
    )
    cfg = synth.cfg
    assert (cfg.epsilon, cfg.stage2.epochs, cfg.stage1.width) == (3, 2, 16)
    assert cfg.evaluation.synthetic_count == 100
    assert cfg.ledger == str(tmp_path / "ledger.json")
    with pytest.raises(ConfigError, match=r"stage2\.epochz"):
        tdpdm.Synthesizer(stage2__epochz=3)
    with pytest.raises(ConfigError, match="epsilon"):
        tdpdm.Synthesizer(epsilon=-1)


GOOD = np.zeros((4, 28, 28), np.uint8)


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "words"),
    [
        ({"a": 1}, {}, TypeError, "a dict is not supported"),
        ("cifar-10", {}, TypeError, "neither a built-in data set .* nor an existing path"),
        (GOOD, {}, DataError, "arrays need name="),
        (torch.zeros(4, 28, 28), {}, DataError, "arrays need name="),
        (np.full((4, 28, 28), np.nan, np.float32), {"name": "a"}, DataError, "NaN or infinite"),
        (torch.full((4, 28, 28), np.inf), {"name": "a"}, DataError, "NaN or infinite"),
        (np.full((4, 28, 28), 2.0), {"name": "a"}, DataError, r"in \[0, 1\]"),
        (np.full((4, 28, 28), 200, np.int64), {"name": "a"}, DataError, "dtype int64"),
        (np.zeros((4, 28), np.uint8), {"name": "a"}, DataError, "2 dimensions"),
        (np.zeros((4, 28, 28, 2), np.uint8), {"name": "a"}, DataError, "C 1 or 3"),
        (np.zeros((4, 28, 20), np.uint8), {"name": "a"}, DataError, "square"),
        ((GOOD, np.zeros(4, int)), {"name": "a"}, DataError, "labels need class_names="),
        ((GOOD, np.zeros(3, int)), {"name": "a", "class_names": ["x"]}, DataError, r"\(4,\)"),
        ((GOOD, np.zeros(4)), {"name": "a", "class_names": ["x"]}, DataError, "integers"),
        (GOOD, {"name": "a", "class_names": ["x"]}, DataError, "no labels"),
        (GOOD, {"name": "Bad Name"}, DataError, "data set name"),
    ],
)
def test_fit_refuses_inputs_it_cannot_read_before_running(
    data, kwargs, error, words, tmp_path: Path
) -> None:
    """One line, no value of the data in it, and nothing charged or written."""
    ledger = tmp_path / "ledger.json"
    synth = tdpdm.Synthesizer(ledger=ledger, out=tmp_path / "out", log=None)
    with pytest.raises(error, match=words) as err:
        synth.fit(data, **kwargs)
    assert "\n" not in str(err.value) and "200" not in str(err.value)
    assert not ledger.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "layout",
    [
        lambda x: x[:, 0],  # (N, H, W)
        lambda x: x[:, 0, :, :, None],  # (N, H, W, 1)
        lambda x: x[:, :1],  # (N, 1, H, W)
        lambda x: torch.from_numpy(x[:, 0]),  # a tensor
        lambda x: torch.from_numpy(x[:, 0] / 255.0),  # floats in [0, 1]
        lambda x: (x[:, 0] / 255.0).astype(np.float32),
    ],
)
def test_every_grey_layout_reads_as_the_same_uint8_images(layout) -> None:
    from tdpdm.data.arrays import array_source

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    source = array_source(layout(pixels), name="grey", class_names=None)
    images, labels = source.read()
    assert images.dtype == np.uint8 and np.array_equal(images, pixels)
    assert labels.tolist() == [0] * 5 and source.describe().class_names == ("unlabelled",)


def test_rgb_layouts_and_labelled_tensors() -> None:
    from tdpdm.data.arrays import array_source

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (4, 3, 6, 6), dtype=np.uint8)
    labels = torch.tensor([0, 1, 1, 0])
    for images in (pixels, pixels.transpose(0, 2, 3, 1), torch.from_numpy(pixels / 255.0)):
        source = array_source((images, labels), name="rgb", class_names=("a", "b"))
        got, got_labels = source.read()
        assert np.array_equal(got, pixels) and got_labels.tolist() == [0, 1, 1, 0]
        assert (source.describe().channels, source.describe().image_size) == (3, 6)


def test_sampling_before_fit_is_a_clear_error() -> None:
    synth = tdpdm.Synthesizer(log=None)
    with pytest.raises(RuntimeError, match="not fitted"):
        synth.sample(10)
    assert "not fitted" in repr(synth)


def test_sample_cli_on_a_folder_that_is_no_run(tmp_path: Path, capsys) -> None:
    assert main(["sample", "--from", str(tmp_path), "--n", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a finished tdpdm run" in err


def test_sample_cli_on_a_damaged_release(tmp_path: Path, capsys) -> None:
    """A release whose decoder file is not a checkpoint: one line naming the file."""
    release = tmp_path / "release"
    (release / "models").mkdir(parents=True)
    (release / "report.json").write_text(
        '{"run_id": "r", "dataset": "mnist", "config": {}, "privacy": {}}'
    )
    (release / "models" / "autoencoder.pt").write_bytes(b"not a checkpoint")
    assert main(["sample", "--from", str(tmp_path), "--n", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "autoencoder.pt" in err and "not a readable checkpoint" in err and "\n" not in err


def test_stage2_weights_of_unknown_shape_fail_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "diffusion.pt"
    torch.save({"something": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a readable stage-2 model") as err:
        load_stage2(str(path))
    assert "\n" not in str(err.value)


def test_fit_keeps_the_config_and_changes_only_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fit("fashion-mnist", data_dir=...)` on a synthesizer built from a config (as `tdpdm
    run` builds it) changes the data keys only; the pipeline gets that config."""
    import tdpdm.api as api
    from tdpdm.config import load_config

    ran = []
    monkeypatch.setattr(api, "run_pipeline", lambda cfg, log, records: ran.append(cfg) or "result")
    cfg = load_config(None, {"epsilon": 2, "stage2.epochs": 3, "out": str(tmp_path / "o")})
    synth = tdpdm.Synthesizer.from_config(cfg, log=None)
    assert synth.fit("fashion-mnist", data_dir=tmp_path / "data") is synth
    (used,) = ran
    assert (used.dataset, used.data_dir) == ("fashion-mnist", str(tmp_path / "data"))
    assert (used.epsilon, used.stage2.epochs, used.out) == (2, 3, str(tmp_path / "o"))
    assert synth.result == "result"
