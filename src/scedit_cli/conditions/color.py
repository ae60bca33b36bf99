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


def color_array(rgb: np.ndarray, ratio: int = DEFAULT_RATIO) -> np.ndarray:
    if ratio < 1:
        raise ValueError(f"colour downsampling ratio must be >= 1, got {ratio}")
    h, w = rgb.shape[:2]
    # Images smaller than `ratio` still get one colour cell instead of a 0-size resize error.
    small = cv2.resize(rgb, (max(1, w // ratio), max(1, h // ratio)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def color_map(image: Image.Image, ratio: int = DEFAULT_RATIO) -> Image.Image:
    """The colour map of `image` (RGB, same size)."""
    return Image.fromarray(color_array(np.asarray(to_rgb8(image)), ratio))
