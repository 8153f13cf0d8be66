"""Sample grid: size, valid PNG, per-class rows, blank cells for short classes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tdpdm.report.grid import BLANK_VALUE, grid_png_bytes, render_sample_grid, save_sample_grid


def test_png_is_valid_with_expected_size(sample_images: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample_images
    png = grid_png_bytes(images, labels, per_class=10, scale=2)
    with Image.open(io.BytesIO(png)) as im:
        im.verify()
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        assert im.height == 10 * 28 * 2
        label_w = im.width - 10 * 28 * 2
        assert 0 < label_w < 100


def test_without_labels_size_is_exact(sample_images: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample_images
    grid = render_sample_grid(images, labels, per_class=7, scale=3, show_labels=False)
    assert grid.size == (7 * 28 * 3, 10 * 28 * 3)


def test_rows_hold_their_class_and_short_class_is_blank(
    sample_images: tuple[np.ndarray, np.ndarray],
) -> None:
    images, labels = sample_images
    cells = np.asarray(render_sample_grid(images, labels, scale=1, show_labels=False))
    for c in range(10):
        expected = images[labels == c][:10]
        for j in range(10):
            cell = cells[c * 28 : (c + 1) * 28, j * 28 : (j + 1) * 28]
            if j < len(expected):
                np.testing.assert_array_equal(cell, expected[j])
            else:
                assert (cell == BLANK_VALUE).all(), (c, j)
    assert len(images[labels == 9]) == 3


def test_labels_are_drawn_on_the_left(sample_images: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample_images
    grid = np.asarray(render_sample_grid(images, labels, class_names=[f"c{i}" for i in range(10)]))
    label_w = grid.shape[1] - 10 * 56
    column = grid[:, :label_w]
    for c in range(10):
        assert (column[c * 56 : (c + 1) * 56] < 128).any(), f"no text in row {c}"


def test_save_to_path_and_file(
    tmp_path: Path, sample_images: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = sample_images
    save_sample_grid(images, labels, tmp_path / "g.png")
    buf = io.BytesIO()
    save_sample_grid(images, labels, buf)
    assert (tmp_path / "g.png").read_bytes() == buf.getvalue()
    assert buf.getvalue() == grid_png_bytes(images, labels)


def test_channel_axis_and_empty_input_accepted() -> None:
    images = np.zeros((0, 8, 8, 1), dtype=np.uint8)
    grid = render_sample_grid(
        images, np.zeros(0, dtype=int), per_class=2, num_classes=3, show_labels=False
    )
    assert grid.size == (2 * 16, 3 * 16)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((2, 4, 4), dtype=np.float32), np.zeros(2), "uint8"),
        (np.zeros((2, 4), dtype=np.uint8), np.zeros(2), "shape"),
        (np.zeros((2, 4, 4), dtype=np.uint8), np.zeros(3), "labels"),
    ],
)
def test_bad_input_rejected(images: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_sample_grid(images, labels)


def test_class_names_length_checked(sample_images: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample_images
    with pytest.raises(ValueError, match="class_names"):
        render_sample_grid(images, labels, class_names=["a", "b"])


@pytest.mark.parametrize("layout", ["channels-last", "channels-first"])
def test_rgb_images_give_an_rgb_grid(layout: str) -> None:
    """Your own data may be RGB (issue 15): the grid keeps the colours, either layout."""
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    images[..., 0] = 200  # red
    labels = np.array([0, 1, 0, 1])
    given = images if layout == "channels-last" else images.transpose(0, 3, 1, 2)
    grid = render_sample_grid(given, labels, per_class=2, num_classes=2, show_labels=False)
    assert grid.mode == "RGB" and grid.size == (2 * 16, 2 * 16)
    assert grid.getpixel((0, 0)) == (200, 0, 0)
    labelled = render_sample_grid(given, labels, per_class=2, num_classes=2, class_names="ab")
    assert labelled.mode == "RGB"
