"""Arrays and tensors handed to the Python API (`Synthesizer.fit(images)`), checked and turned
into an `ArraySource` before anything is charged.

Accepted: NumPy arrays or torch tensors (anything with `.detach().cpu().numpy()`; torch is not
imported here), grey (N, H, W) / (N, H, W, 1) or RGB (N, H, W, 3) / (N, C, H, W), either uint8
or floating point in [0, 1] (scaled to uint8 by rounding x * 255). Labels: integers (N,), with
the declared class names.

Why the values of float images may be checked before the charge (NaN, infinities, outside
[0, 1]), unlike a file's pixels: the arrays are already in the caller's own memory, the refusal
goes back to that caller only, and nothing is written or released. The guarantee is stated over
valid inputs (the declared domain), as for a file's structure. The message names no count, no
position and no value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tdpdm.data.errors import DataError
from tdpdm.data.sources import ArraySource, channels_first

WHERE = "fit(arrays)"


def as_numpy(value: Any, what: str) -> np.ndarray:
    """A NumPy array from an array or a tensor (copied off the device); TypeError otherwise."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return np.asarray(value.detach().cpu().numpy())
    raise TypeError(
        f"{WHERE}: {what} must be a NumPy array or a torch tensor, not a {type(value).__name__}"
    )


def image_array(value: Any) -> np.ndarray:
    """uint8 images in a layout `channels_first` accepts, or one DataError line."""
    images = as_numpy(value, "images")
    if images.ndim not in (3, 4):
        raise DataError(
            f"{WHERE}: images have {images.ndim} dimensions, shape {tuple(images.shape)}: "
            "expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3"
        )
    channels_first(images.shape, WHERE)  # the layout, before looking at any value
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(
            f"{WHERE}: images have dtype {images.dtype}: expected uint8 (0-255) or floats in "
            "[0, 1] (cast other integers with .astype(np.uint8) if they are 0-255 pixels)"
        )
    if not np.isfinite(images).all():
        raise DataError(f"{WHERE}: float images hold NaN or infinite values (none are read)")
    if (images < 0).any() or (images > 1).any():
        raise DataError(
            f"{WHERE}: float images must lie in [0, 1] (scale 0-255 pixels by 1/255, or pass uint8)"
        )
    return np.rint(images.astype(np.float64) * 255.0).astype(np.uint8)


def label_array(value: Any, n: int, what: str = "labels") -> np.ndarray:
    """Integer (N,) labels (their range is checked under the grant, in `ArraySource.read`)."""
    labels = as_numpy(value, what)
    if not np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
        raise DataError(f"{WHERE}: {what} have dtype {labels.dtype}: expected integers")
    if labels.shape != (n,):
        raise DataError(
            f"{WHERE}: {what} have shape {tuple(labels.shape)}, expected ({n},): one per image"
        )
    return labels


def array_source(
    data: Any,
    *,
    name: str | None,
    class_names: tuple[str, ...] | list[str] | None,
    units: Any = None,
) -> ArraySource:
    """The `ArraySource` for `images` or `(images, labels)`, checked (no ledger yet)."""
    if isinstance(data, tuple | list):
        if len(data) != 2:
            raise TypeError(f"{WHERE}: give images, or a pair (images, labels)")
        images, labels = data
    else:
        images, labels = data, None
    if not name:
        raise DataError(
            f"{WHERE}: arrays need name= (the ledger keeps one privacy budget per data set "
            "name, and arrays have no path to name them by)"
        )
    pixels = image_array(images)
    if labels is not None:
        labels = label_array(labels, len(pixels))
        if not class_names:
            raise DataError(
                f"{WHERE}: labels need class_names= (the declared, public label set; it is "
                "never read from the labels, which are private)"
            )
    elif class_names:
        raise DataError(f"{WHERE}: class_names= given but no labels: pass (images, labels)")
    if units is not None:
        units = as_numpy(units, "units")
        if units.shape != (len(pixels),) or units.dtype.kind not in "iuUSO":
            raise DataError(
                f"{WHERE}: units have shape {tuple(units.shape)} and dtype {units.dtype}: "
                f"expected ({len(pixels)},) integers or strings, one privacy unit per image"
            )
    source = ArraySource(pixels, labels, class_names, name=name, units=units)
    source.describe()  # the remaining structural checks, now
    return source
