"""The sum every sufficient-statistics release is made of (`tdpdm.stages.row_sums`): equal to
adding each record's vector to its row by hand, chunk boundaries included; linear, so shards
summed apart add up to the whole; and swappable for a block, then restored."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tdpdm.stages import row_sums as rs
from tdpdm.stages.dp_moments import MomentScales, centred_features, moment_features


def _by_hand(rows, num_rows, vectors):
    table = np.zeros((num_rows, vectors.shape[1]))
    np.add.at(table, rows, vectors)
    return table


def test_equals_adding_each_vector_to_its_row_across_chunks(monkeypatch):
    monkeypatch.setattr(rs, "CHUNK", 7)  # 50 records: several chunks and a ragged last one
    rng = np.random.default_rng(0)
    z, rows = rng.uniform(-1, 1, (50, 4)), rng.integers(0, 3, 50)
    features = functools.partial(moment_features, covariance="full")
    got = rs.local_row_sums(rows, 3, features, z)
    assert np.allclose(got, _by_hand(rows, 3, moment_features(z, "full")))
    assert rs.local_row_sums(rows[:0], 3, features, z[:0]).shape == got.shape  # empty: zeros


def test_shards_summed_apart_add_up_to_the_whole():
    rng = np.random.default_rng(1)
    n, d = 200, 5
    z, rows = rng.uniform(-1, 1, (n, d)), rng.integers(0, 4, n)
    centres, radii = rng.uniform(-0.5, 0.5, (n, d)), rng.uniform(0.5, 1.5, n)
    features = functools.partial(
        centred_features, covariance="full", scales=MomentScales.for_latent(d)
    )
    whole = rs.local_row_sums(rows, 4, features, z, centres, radii)
    parts = np.array_split(np.arange(n), 3)
    summed = sum(rs.local_row_sums(rows[p], 4, features, z[p], centres[p], radii[p]) for p in parts)
    assert np.allclose(whole, summed)


def test_a_summer_holds_for_its_block_only():
    calls = []

    def counting(rows, num_rows, features, *arrays):
        calls.append(len(rows))
        return rs.local_row_sums(rows, num_rows, features, *arrays)

    counting.where = "counting"
    z, rows = np.zeros((10, 2)), np.zeros(10, dtype=int)
    features = functools.partial(moment_features, covariance="diagonal")
    assert rs.summed_where() == "local"
    with rs.summing_with(counting):
        assert rs.summed_where() == "counting"
        rs.row_sums(rows, 1, features, z)
    rs.row_sums(rows, 1, features, z)
    assert calls == [10] and rs.summed_where() == "local"
    with pytest.raises(RuntimeError), rs.summing_with(counting):
        raise RuntimeError("a failing fit")
    assert rs.summed_where() == "local"
