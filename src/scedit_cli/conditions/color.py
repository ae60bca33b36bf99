"""Colour maps (paper appendix A.4, after T2I-Adapter).

Downsample by 64x with bicubic interpolation, then upsample back to the original
size with nearest-neighbour, which keeps a coarse grid of the image's colours.
Same two `cv2.resize` calls as T2I-Adapter's and the SCEdit authors'
(`ColorAnnotator`, RATIO=64) colour annotators.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from ..images import to_rgb8

DEFAULT_RATIO = 64


def _cells(rgb: np.ndarray, ratio: int) -> np.ndarray:
    if ratio < 1:
        raise ValueError(f"colour downsampling ratio must be >= 1, got {ratio}")
    h, w = rgb.shape[:2]
    # Images smaller than `ratio` still get one colour cell instead of a 0-size resize error.
    return cv2.resize(rgb, (max(1, w // ratio), max(1, h // ratio)), interpolation=cv2.INTER_CUBIC)


def color_array(rgb: np.ndarray, ratio: int = DEFAULT_RATIO) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(_cells(rgb, ratio), (w, h), interpolation=cv2.INTER_NEAREST)


def color_map(image: Image.Image, ratio: int = DEFAULT_RATIO) -> Image.Image:
    """The colour map of `image` (RGB, same size)."""
    return Image.fromarray(color_array(np.asarray(to_rgb8(image)), ratio))


def color_map_palette(image: Image.Image, ratio: int = DEFAULT_RATIO) -> Image.Image:
    """`color_map` as a palette image (mode "P") when its cells have at most 256 colours, which
    they always do up to 1024x1024 at ratio 64; otherwise the RGB `color_map`. Either way `to_rgb8`
    of it is `color_map`'s image exactly.

    What `scedit prepare` stores: upsampling the cells' palette indices with the same nearest-neighbour
    resize picks the same cells as upsampling their colours, and the palette PNG encodes ~3x faster.
    """
    rgb = np.asarray(to_rgb8(image))
    h, w = rgb.shape[:2]
    cells = _cells(rgb, ratio)
    packed = (cells[..., 0].astype(np.uint32) << 16) | (cells[..., 1].astype(np.uint32) << 8) | cells[..., 2]
    colours, index = np.unique(packed, return_inverse=True)
    if len(colours) > 256:
        return Image.fromarray(cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST))
    big = cv2.resize(index.reshape(cells.shape[:2]).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    out = Image.frombytes("P", (w, h), big.tobytes())
    palette = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1).astype(np.uint8)
    out.putpalette(palette.tobytes())
    return out
