"""The calibration cache saves time and can never weaken a guarantee."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tdpdm.privacy import calibration_cache
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.calibration import calibrate_noise
from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent

DELTA = 1e-5


def _events(sigma: float) -> list:
    return [PoissonGaussianEvent(noise_multiplier=sigma, sampling_rate=0.02, steps=50)]


@pytest.fixture
def cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache" / "calibration.json"
    monkeypatch.setenv("TDPDM_CALIBRATION_CACHE", str(path))
    return path


def test_second_calibration_is_served_from_the_cache(cache_file: Path, monkeypatch) -> None:
    first = calibrate_noise(_events, 2.0, DELTA, "add_remove")
    assert cache_file.is_file()
    # A cache hit must not run the search: make the search fail if it is reached.
    monkeypatch.setattr(
        "tdpdm.privacy.calibration._geometric_bracket",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("searched despite the cache")),
    )
    assert calibrate_noise(_events, 2.0, DELTA, "add_remove") == first


def test_a_different_problem_is_not_served_from_the_cache(cache_file: Path) -> None:
    a = calibrate_noise(_events, 2.0, DELTA, "add_remove")
    b = calibrate_noise(_events, 3.0, DELTA, "add_remove")
    assert b < a
    c = calibrate_noise(
        _events, 3.0, DELTA, "add_remove", fixed_events=[GaussianEvent(noise_multiplier=20.0)]
    )
    assert c > b


def test_a_tampered_entry_that_breaks_the_target_is_ignored(cache_file: Path) -> None:
    honest = calibrate_noise(_events, 2.0, DELTA, "add_remove")
    data = json.loads(cache_file.read_text())
    (key,) = data["entries"]
    data["entries"][key] = honest * 0.5  # would overspend
    cache_file.write_text(json.dumps(data))
    again = calibrate_noise(_events, 2.0, DELTA, "add_remove")
    assert compute_epsilon(_events(again), DELTA, "add_remove").epsilon <= 2.0
    assert again == pytest.approx(honest, rel=1e-9)


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"\xff\xfe", b'{"entries": [1, 2]}'])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(cache_file: Path, garbage: bytes) -> None:
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(garbage)
    sigma = calibrate_noise(_events, 2.0, DELTA, "add_remove")
    assert compute_epsilon(_events(sigma), DELTA, "add_remove").epsilon <= 2.0
    assert json.loads(cache_file.read_text())["entries"]


def test_cache_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TDPDM_CALIBRATION_CACHE", "off")
    assert calibration_cache.cache_path() is None
    calibration_cache.store("k", 1.0)  # no-op, no error
    assert calibration_cache.lookup("k") is None
