"""Privacy events as plain data: round trips, validation, and their dp_accounting form."""

from __future__ import annotations

import json
import math

import pytest
from dp_accounting import dp_event

from tdpdm.privacy.events import (
    EventError,
    GaussianEvent,
    PoissonGaussianEvent,
    event_from_dict,
    event_to_dict,
    is_empty,
    to_dp_event,
)

EVENTS = [
    PoissonGaussianEvent(noise_multiplier=1.37, sampling_rate=0.0341, steps=147, stage="encoder"),
    PoissonGaussianEvent(noise_multiplier=0.5, sampling_rate=1.0, steps=0),
    GaussianEvent(noise_multiplier=4.25, count=1, stage="latent_release"),
    GaussianEvent(noise_multiplier=9.0, count=3),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{e.kind}-{e.stage or 'nostage'}")
def test_dict_round_trip_through_json(event) -> None:
    data = event_to_dict(event)
    assert next(iter(data)) == "kind"
    assert data["kind"] == event.kind
    again = event_from_dict(json.loads(json.dumps(data)))
    assert again == event
    assert type(again) is type(event)


def test_dict_fields_are_the_mechanism_parameters() -> None:
    data = event_to_dict(EVENTS[0])
    assert data == {
        "kind": "poisson_gaussian",
        "noise_multiplier": 1.37,
        "sampling_rate": 0.0341,
        "steps": 147,
        "stage": "encoder",
    }
    assert event_to_dict(EVENTS[2]) == {
        "kind": "gaussian",
        "noise_multiplier": 4.25,
        "count": 1,
        "stage": "latent_release",
    }


def test_unknown_dict_keys_are_ignored_but_kind_is_not() -> None:
    data = event_to_dict(EVENTS[2]) | {"clip_norm": 1.0}
    assert event_from_dict(data) == EVENTS[2]
    with pytest.raises(EventError, match="unknown event kind"):
        event_from_dict({"kind": "laplace", "noise_multiplier": 1.0})
    with pytest.raises(EventError, match="unknown event kind"):
        event_from_dict({"noise_multiplier": 1.0})


@pytest.mark.parametrize("noise", [0.0, -1.0, math.nan, math.inf])
def test_noise_must_be_positive_and_finite(noise: float) -> None:
    with pytest.raises(EventError, match="noise_multiplier"):
        PoissonGaussianEvent(noise, 0.1, 10)
    with pytest.raises(EventError, match="noise_multiplier"):
        GaussianEvent(noise)
    with pytest.raises(EventError):
        event_from_dict({"kind": "gaussian", "noise_multiplier": noise})


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.0000001, 2.0, math.nan])
def test_sampling_rate_must_be_in_unit_interval(rate: float) -> None:
    with pytest.raises(EventError, match="sampling_rate"):
        PoissonGaussianEvent(1.0, rate, 10)
    with pytest.raises(EventError, match="sampling_rate"):
        event_from_dict(
            {"kind": "poisson_gaussian", "noise_multiplier": 1.0, "sampling_rate": rate, "steps": 1}
        )


@pytest.mark.parametrize("steps", [-1, -100, 1.5])
def test_steps_must_be_non_negative_integers(steps) -> None:
    with pytest.raises(EventError, match="steps"):
        PoissonGaussianEvent(1.0, 0.1, steps)
    with pytest.raises(EventError, match="count"):
        GaussianEvent(1.0, count=steps)


def test_missing_or_mistyped_fields_are_event_errors() -> None:
    with pytest.raises(EventError):
        event_from_dict({"kind": "poisson_gaussian", "noise_multiplier": 1.0, "steps": 3})
    with pytest.raises(EventError):
        event_from_dict({"kind": "gaussian", "noise_multiplier": "lots"})


def test_events_are_immutable() -> None:
    with pytest.raises(AttributeError):
        EVENTS[0].steps = 1  # type: ignore[misc]


def test_dp_event_form() -> None:
    composed = to_dp_event(EVENTS[:1] + EVENTS[2:3])
    assert isinstance(composed, dp_event.ComposedDpEvent)
    dpsgd, release = composed.events
    assert isinstance(dpsgd, dp_event.SelfComposedDpEvent) and dpsgd.count == 147
    assert isinstance(dpsgd.event, dp_event.PoissonSampledDpEvent)
    # Not swapped (DESIGN.md 3.3): the rate is the sampling probability, sigma the noise.
    assert dpsgd.event.sampling_probability == 0.0341
    assert dpsgd.event.event == dp_event.GaussianDpEvent(noise_multiplier=1.37)
    assert release == dp_event.SelfComposedDpEvent(
        event=dp_event.GaussianDpEvent(noise_multiplier=4.25), count=1
    )


def test_is_empty() -> None:
    assert is_empty(EVENTS[1]) and not is_empty(EVENTS[0])
    assert is_empty(GaussianEvent(1.0, count=0)) and not is_empty(EVENTS[3])
