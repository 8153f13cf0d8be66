import math

import numpy as np
import pytest

from tdpdm.evaluate.inception_score import inception_score


def test_one_hot_uniform_classes_score_equals_class_count():
    probs = np.eye(10)[np.arange(1000) % 10]
    mean, std = inception_score(probs, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-12) and std == 0.0


def test_class_sorted_input_is_shuffled_before_splitting():
    """Contiguous splits of class-sorted samples would each score 1."""
    probs = np.eye(10)[np.repeat(np.arange(10), 1000)]
    mean, std = inception_score(probs, splits=10)
    assert 9.9 < mean <= 10.0 and std < 0.05


def test_identical_rows_score_one():
    row = np.array([0.7, 0.1, 0.05, 0.05, 0.1])
    mean, std = inception_score(np.tile(row, (50, 1)), splits=5)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0)


def test_hand_computed_two_class_value():
    # p(y) = (0.75, 0.25); KL terms log(4/3) and 0.5 log(2/3) + 0.5 log 2
    expected = math.exp((math.log(4 / 3) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / 2)
    mean, _ = inception_score(np.array([[1.0, 0.0], [0.5, 0.5]]), splits=1)
    assert mean == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("probs", "splits", "message"),
    [
        (np.ones(10) / 10, 1, "shape"),
        (np.full((5, 2), 0.5), 6, "splits"),
        (np.full((5, 2), 0.6), 1, "sum to 1"),
        (np.array([[1.5, -0.5], [0.5, 0.5]]), 1, "non-negative"),
        (np.array([[np.nan, 1.0], [0.5, 0.5]]), 1, "finite"),
    ],
)
def test_rejects_bad_input(probs, splits, message):
    with pytest.raises(ValueError, match=message):
        inception_score(probs, splits=splits)
