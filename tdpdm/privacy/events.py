"""Privacy spends as plain data.

Like `dp_accounting.dp_event`, a spend is an immutable record of *which mechanism ran with
which parameters*, never an epsilon: any accountant (PRV, PLD, RDP) can re-read a ledger of
events and compose them under the adjacency it is asked for. A noise multiplier is always the
noise's standard deviation over the per-record clipping norm, whatever the adjacency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from dp_accounting import dp_event


class EventError(ValueError):
    """An event record is malformed (bad kind, non-positive noise, rate outside (0, 1])."""


@dataclass(frozen=True)
class PoissonGaussianEvent:
    """`steps` DP-SGD steps: Poisson sampling at `sampling_rate`, then the Gaussian mechanism."""

    noise_multiplier: float
    sampling_rate: float
    steps: int
    stage: str = ""
    kind: ClassVar[str] = "poisson_gaussian"

    def __post_init__(self) -> None:
        _check_noise(self.noise_multiplier)
        if not (0.0 < self.sampling_rate <= 1.0) or math.isnan(self.sampling_rate):
            raise EventError(f"sampling_rate must be in (0, 1], got {self.sampling_rate}")
        if int(self.steps) != self.steps or self.steps < 0:
            raise EventError(f"steps must be a non-negative integer, got {self.steps}")

    def to_dp_event(self) -> dp_event.DpEvent:
        step = dp_event.PoissonSampledDpEvent(
            sampling_probability=self.sampling_rate,
            event=dp_event.GaussianDpEvent(noise_multiplier=self.noise_multiplier),
        )
        return dp_event.SelfComposedDpEvent(event=step, count=int(self.steps))


@dataclass(frozen=True)
class GaussianEvent:
    """A Gaussian release of per-record vectors clipped to norm C, noise std = multiplier * C.

    `count` is how many times the same release mechanism ran (normally once).
    """

    noise_multiplier: float
    count: int = 1
    stage: str = ""
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        _check_noise(self.noise_multiplier)
        if int(self.count) != self.count or self.count < 0:
            raise EventError(f"count must be a non-negative integer, got {self.count}")

    def to_dp_event(self) -> dp_event.DpEvent:
        single = dp_event.GaussianDpEvent(noise_multiplier=self.noise_multiplier)
        return dp_event.SelfComposedDpEvent(event=single, count=int(self.count))


Event = PoissonGaussianEvent | GaussianEvent
_KINDS: dict[str, type] = {"poisson_gaussian": PoissonGaussianEvent, "gaussian": GaussianEvent}


def _check_noise(noise_multiplier: float) -> None:
    if not (noise_multiplier > 0.0) or math.isinf(noise_multiplier):
        raise EventError(f"noise_multiplier must be positive and finite, got {noise_multiplier}")


def event_to_dict(event: Event) -> dict[str, Any]:
    """JSON-ready form with `kind` first; this is the ledger's and the report's format."""
    return {"kind": event.kind, **asdict(event)}


def event_from_dict(data: Mapping[str, Any]) -> Event:
    kind = data.get("kind")
    if kind not in _KINDS:
        raise EventError(f"unknown event kind {kind!r}; expected one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    fields = {k: v for k, v in data.items() if k != "kind" and k in cls.__dataclass_fields__}
    try:
        return cls(**fields)
    except TypeError as err:
        raise EventError(f"bad {kind} event {dict(data)}: {err}") from None


def to_dp_event(events: Iterable[Event]) -> dp_event.DpEvent:
    """One composed `dp_accounting` event for a list of ours (for PLD/RDP cross-checks)."""
    return dp_event.ComposedDpEvent(events=[e.to_dp_event() for e in events])


def is_empty(event: Event) -> bool:
    return (event.steps if isinstance(event, PoissonGaussianEvent) else event.count) == 0
