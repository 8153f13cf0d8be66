"""Sample grid: one row per class, so a reader sees at a glance whether every class came out.

Class-conditional generators fail per class (a mode that collapses, a digit that never appears),
which a random sample hides; a row per class makes such failures visible.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from os import PathLike
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BLANK_VALUE = 224
"""Grey of a cell with no sample: light, so it is not mistaken for a dark MNIST background."""

LABEL_PAD = 6
"""Pixels either side of a row label."""


def _as_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grey or (N, H, W, 3) RGB, from those or (N, 1|3, H, W) or (N, H, W, 1)."""
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)  # channels first (the data sources' layout)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 and not (arr.ndim == 4 and arr.shape[-1] == 3):
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    return arr


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument.
        return ImageFont.load_default()


def _label_texts(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
    return [str(n) for n in class_names]


def _label_column(
    texts: list[str], cell_h: int
) -> tuple[int, ImageFont.ImageFont | ImageFont.FreeTypeFont]:
    font = _font(max(10, min(cell_h * 2 // 3, 24)))
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    widest = max((probe.textlength(t, font=font) for t in texts), default=0.0)
    return int(np.ceil(widest)) + 2 * LABEL_PAD, font


def render_sample_grid(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    per_class: int = 10,
    num_classes: int = 10,
    scale: int = 2,
    class_names: Sequence[str] | None = None,
    show_labels: bool = True,
) -> Image.Image:
    """Build the grid as a Pillow image: greyscale, or RGB for colour images.

    Row ``c`` holds the first ``per_class`` images labelled ``c`` (in input order, so the grid is
    deterministic); missing samples leave light-grey cells. Pixels are enlarged ``scale`` times
    by nearest neighbour, so no interpolation blurs what the generator produced. The image is
    ``label column + per_class * W * scale`` wide and ``num_classes * H * scale`` high.
    """
    arr = _as_images(images)
    lab = np.asarray(labels).reshape(-1)
    if lab.shape[0] != arr.shape[0]:
        raise ValueError(f"{arr.shape[0]} images but {lab.shape[0]} labels")
    if per_class < 1 or num_classes < 1 or scale < 1:
        raise ValueError("per_class, num_classes and scale must all be >= 1")
    h, w = arr.shape[1] * scale, arr.shape[2] * scale
    colour = arr.shape[3:]  # () grey, (3,) RGB
    cells = np.full((num_classes * h, per_class * w, *colour), BLANK_VALUE, dtype=np.uint8)
    for c in range(num_classes):
        idx = np.flatnonzero(lab == c)[:per_class]
        for j, i in enumerate(idx):
            big = np.repeat(np.repeat(arr[i], scale, axis=0), scale, axis=1)
            cells[c * h : (c + 1) * h, j * w : (j + 1) * w] = big
    grid = Image.fromarray(cells)  # mode "L" (2-D) or "RGB"
    if not show_labels:
        return grid
    texts = _label_texts(num_classes, class_names)
    label_w, font = _label_column(texts, h)
    white, black = (255, 0) if grid.mode == "L" else ((255,) * 3, (0,) * 3)
    out = Image.new(grid.mode, (label_w + grid.width, grid.height), white)
    out.paste(grid, (label_w, 0))
    draw = ImageDraw.Draw(out)
    for c, text in enumerate(texts):
        draw.text((label_w - LABEL_PAD, c * h + h / 2), text, fill=black, font=font, anchor="rm")
    return out


def grid_png_bytes(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    per_class: int = 10,
    num_classes: int = 10,
    scale: int = 2,
    class_names: Sequence[str] | None = None,
    show_labels: bool = True,
) -> bytes:
    """The grid as PNG bytes, for embedding in the HTML report without a file round trip."""
    buf = io.BytesIO()
    save_sample_grid(
        images,
        labels,
        buf,
        per_class=per_class,
        num_classes=num_classes,
        scale=scale,
        class_names=class_names,
        show_labels=show_labels,
    )
    return buf.getvalue()


def save_sample_grid(
    images: np.ndarray,
    labels: np.ndarray,
    path_or_file: str | PathLike[str] | BinaryIO,
    *,
    per_class: int = 10,
    num_classes: int = 10,
    scale: int = 2,
    class_names: Sequence[str] | None = None,
    show_labels: bool = True,
) -> None:
    """Write the grid (see :func:`render_sample_grid`) as a PNG to a path or binary file."""
    grid = render_sample_grid(
        images,
        labels,
        per_class=per_class,
        num_classes=num_classes,
        scale=scale,
        class_names=class_names,
        show_labels=show_labels,
    )
    grid.save(path_or_file, format="PNG", optimize=True)
