"""Stage 2's sufficient statistics summed on Ray (`tdpdm.distributed.stage2_sums`): the shards
are summed in Ray worker processes, the tables equal the local ones, and a DP fit under the Ray
summer records the same releases (one event per table, noise drawn once on the driver)."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from tdpdm_test_support import EventTally

from tdpdm.distributed.stage2_sums import ray_row_sums
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dp_mixture import MixturePlan, fit_dp_mixture
from tdpdm.stages.dp_moments import moment_features
from tdpdm.stages.row_sums import local_row_sums, summed_where, summing_with


def test_shards_are_summed_in_ray_workers_and_equal_the_local_table(local_ray):
    def pid_features(z: np.ndarray) -> np.ndarray:
        """One column: the process that computed the record's vector (a local function: Ray
        ships it by value, as the workers cannot import this test module)."""
        return np.full((len(z), 1), float(os.getpid()))

    rng = np.random.default_rng(0)
    z, rows = rng.uniform(-1, 1, (300, 6)), rng.integers(0, 3, 300)
    features = functools.partial(moment_features, covariance="full")
    summer = ray_row_sums(3)
    assert summer.where == "ray (3 shards)"
    assert np.allclose(summer(rows, 3, features, z), local_row_sums(rows, 3, features, z))
    pids = summer(np.zeros(300, dtype=int), 1, pid_features, z)[0, 0]
    assert pids != 300 * os.getpid()  # not one of them summed in this process


def test_a_dp_mixture_fit_on_ray_records_the_same_releases(local_ray):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    z = np.where(labels[:, None] == 0, 0.4, -0.4) + 0.05 * rng.normal(size=(400, 3))
    plan = MixturePlan(1e-6, rounds=2, component_moments=True, centred=True)
    fits = {}
    for where, summer in (("local", None), ("ray", ray_row_sums(2))):
        tally = EventTally()
        args = {"num_classes": 2, "components": 2, "covariance": "full", "plan": plan}
        key = MechanismKey.fresh("test-ray-sums")
        if summer is None:
            fits[where] = (fit_dp_mixture(z, labels, session=tally, key=key, **args), tally)
            continue
        with summing_with(summer):
            assert summed_where() == "ray (2 shards)"
            fits[where] = (fit_dp_mixture(z, labels, session=tally, key=key, **args), tally)
    (local, local_tally), (ray, ray_tally) = fits["local"], fits["ray"]
    assert (
        ray_tally.events
        == local_tally.events
        == [*plan.events()[:2], plan.round_event(), plan.round_event(), plan.components_event()]
    )
    for a, b in zip(local, ray, strict=True):  # noise 1e-6: the same fit up to float sums
        assert np.allclose(a, b, atol=1e-4)


def test_shards_must_be_positive():
    with pytest.raises(ValueError, match="shards"):
        ray_row_sums(0)
