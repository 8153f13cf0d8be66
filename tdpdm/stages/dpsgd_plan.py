"""What a DP-SGD segment will do, and so what it costs: the plan that is calibrated, charged
and then run exactly (`tdpdm.stages.dpsgd.train_dpsgd`).

Plain data with no torch or Opacus in it, so that planning and accounting (`stages/plan.py`,
stage-2 models, Tune's trial budgets) never import the training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tdpdm.privacy.events import Event, PoissonGaussianEvent


@dataclass(frozen=True)
class DPSGDPlan:
    """What a DP-SGD segment will do; `event()` is what it costs."""

    stage: str
    noise_multiplier: float
    sampling_rate: float
    steps: int
    max_grad_norm: float
    expected_batch_size: int

    @classmethod
    def from_epochs(
        cls,
        stage: str,
        *,
        n_records: int,
        batch_size: int,
        epochs: float,
        noise_multiplier: float,
        max_grad_norm: float,
    ) -> DPSGDPlan:
        batch_size = min(batch_size, n_records)
        rate = batch_size / n_records
        steps = max(1, math.ceil(epochs * n_records / batch_size))
        return cls(stage, noise_multiplier, rate, steps, max_grad_norm, batch_size)

    @classmethod
    def for_section(
        cls, stage: str, n_records: int, section: Any, noise_multiplier: float
    ) -> DPSGDPlan:
        """The segment a config section describes (its batch_size, epochs, max_grad_norm)."""
        return cls.from_epochs(
            stage,
            n_records=n_records,
            batch_size=section.batch_size,
            epochs=section.epochs,
            noise_multiplier=noise_multiplier,
            max_grad_norm=section.max_grad_norm,
        )

    def event(self, steps: int | None = None) -> PoissonGaussianEvent:
        return PoissonGaussianEvent(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            steps=self.steps if steps is None else steps,
            stage=self.stage,
        )

    def events(self) -> list[Event]:
        """The whole segment (a `Stage2Plan`, so a DP-SGD model plugs into a run plan)."""
        return [self.event()]

    def with_noise(self, noise_multiplier: float) -> DPSGDPlan:
        return DPSGDPlan(
            self.stage,
            noise_multiplier,
            self.sampling_rate,
            self.steps,
            self.max_grad_norm,
            self.expected_batch_size,
        )
