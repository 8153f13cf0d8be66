"""The fixed image transform, and the header probe that validates an image before any charge.

Fixed and data-independent (no statistic of the private images is computed): convert to grey
("L") or RGB, then resize to `size` x `size` with bilinear interpolation (Pillow's, which
antialiases when shrinking). Aspect ratio is not kept: every image of a data set has one size
(checked), so the same affine map applies to all of them.

Pillow parses hostile bytes, so every call is wrapped: any failure is one DataError naming the
file, and sizes are bounded before a pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tdpdm.data import storage
from tdpdm.data.errors import DataError

#: Container formats read (by content, not by file name).
FORMATS = frozenset({"PNG", "JPEG"})
#: Pillow modes the transform converts from; grey ones detect as one channel.
GREY_MODES = frozenset({"1", "L", "LA", "I;16", "I;16B", "I;16L"})
COLOUR_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
#: Largest side of a source image, in pixels, and largest image file, in bytes.
MAX_SIDE = 8192
MAX_FILE_BYTES = 64 << 20
#: Image sizes the transform produces (`--image-size`).
MIN_SIZE, MAX_SIZE = 8, 512
#: File names a folder source reads; anything else in a class folder is refused.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Header:
    """What an image's header says: public structure, not content."""

    format: str
    width: int
    height: int
    mode: str

    @property
    def channels(self) -> int:
        return 1 if self.mode in GREY_MODES else 3


def _opened(blob: bytes, source: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(blob), formats=sorted(FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{source}: absurd image size (a decompression bomb)") from None
    except Exception as err:  # Pillow raises many types on hostile bytes
        raise DataError(
            f"{source}: not a readable PNG or JPEG image ({type(err).__name__})"
        ) from None


def probe(blob: bytes, source: str) -> Header:
    """The header of one image, checked (format, mode, size limits); no pixel is decoded."""
    im = _opened(blob, source)
    header = Header(str(im.format), int(im.width), int(im.height), str(im.mode))
    if header.mode not in GREY_MODES | COLOUR_MODES:
        raise DataError(f"{source}: image mode {header.mode!r} is not one the transform reads")
    if not (1 <= header.width <= MAX_SIDE and 1 <= header.height <= MAX_SIDE):
        raise DataError(
            f"{source}: absurd image size {header.width}x{header.height} (each side must be "
            f"1-{MAX_SIDE} px)"
        )
    return header


#: Bytes read to parse a header before the charge (JPEG metadata segments come first).
HEAD_BYTES = 256 << 10


def same_size(first: Header | None, header: Header, where: str) -> Header:
    """The data set's first header, refusing `header` if its image has another size: every
    input format reads images of one size (the transform then resizes them all alike)."""
    if first is not None and (header.width, header.height) != (first.width, first.height):
        raise DataError(
            f"{where}: an image is {header.width}x{header.height}, the data set's first is "
            f"{first.width}x{first.height}: every image must have one size"
        )
    return header if first is None else first


def probe_file(uri: str) -> Header:
    """`probe` on the head of a stored image file: the pixel payload beyond it is not read
    before the charge (the whole file only when its metadata outgrows the head)."""
    where = storage.redact(uri)
    head, whole = storage.read_head(uri, HEAD_BYTES)
    try:
        return probe(head, where)
    except DataError:
        if whole:
            raise
    return probe(storage.read_bytes(uri, max_bytes=MAX_FILE_BYTES), where)


@dataclass(frozen=True)
class ImageTransform:
    """Grey or RGB, then a bilinear resize to `size` x `size`: the same map for every record."""

    channels: int
    size: int

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise DataError(f"image size {self.size} is outside {MIN_SIZE}-{MAX_SIZE} px")

    def image(self, im: Image.Image) -> np.ndarray:
        """uint8 (C, size, size) from a decoded Pillow image."""
        if im.mode.startswith("I;16"):  # 16-bit grey: keep the top 8 bits (convert would clip)
            im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
        im = im.convert("L" if self.channels == 1 else "RGB")
        if im.size != (self.size, self.size):
            im = im.resize((self.size, self.size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
        return arr[None] if self.channels == 1 else arr.transpose(2, 0, 1)

    def decode(self, blob: bytes, source: str) -> np.ndarray:
        """Decode one file's pixels (private: under a grant only) and transform them."""
        probe(blob, source)  # the same limits before decoding as before the charge
        im = _opened(blob, source)
        try:
            im.load()
        except Exception as err:
            raise DataError(
                f"{source}: corrupt image data ({type(err).__name__}; the payload does not decode)"
            ) from None
        return self.image(im)

    def array(self, images: np.ndarray) -> np.ndarray:
        """The transform applied to uint8 (N, C, H, W) arrays (the `.npz` source)."""
        n, c, h, w = images.shape
        if c == self.channels and (h, w) == (self.size, self.size):
            return images
        out = np.empty((n, self.channels, self.size, self.size), dtype=np.uint8)
        for i in range(n):
            pic = images[i, 0] if c == 1 else images[i].transpose(1, 2, 0)
            out[i] = self.image(Image.fromarray(np.ascontiguousarray(pic)))
        return out
