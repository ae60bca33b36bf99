"""Inpainting and outpainting masks (paper appendix A.4).

Inpainting masks follow LaMa's mask generation (Suvorov et al., WACV 2022):
each mask is either a set of thick irregular brush strokes (polylines drawn with
`cv2.line`) or a set of random rectangles, chosen with equal probability, as in
LaMa's "thick" training masks. LaMa's parameters are for 256 px images; we scale
lengths, widths and box sizes by min(H, W) / 256 so masks cover a similar
fraction of a 512 px or 1024 px image.

Conventions shared with train and sample: a mask is an "L" image, 255 where
pixels are hidden (to be generated) and 0 where they are kept; the cut-out is the
RGB image with hidden pixels set to black (0), as in the SCEdit authors'
annotators (MASK_COLOR 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

LAMA_BASE_SIZE = 256


@dataclass(frozen=True)
class IrregularMaskConfig:
    """LaMa "thick" irregular strokes, in pixels of a 256 px image."""

    max_angle: int = 4
    max_len: int = 200
    max_width: int = 100
    min_times: int = 1
    max_times: int = 5


@dataclass(frozen=True)
class BoxMaskConfig:
    """LaMa "thick" random rectangles, in pixels of a 256 px image."""

    margin: int = 10
    bbox_min_size: int = 30
    bbox_max_size: int = 150
    min_times: int = 1
    max_times: int = 4


@dataclass(frozen=True)
class InpaintMaskConfig:
    irregular: IrregularMaskConfig = IrregularMaskConfig()
    box: BoxMaskConfig = BoxMaskConfig()
    irregular_proba: float = 0.5  # the rest are box masks


@dataclass(frozen=True)
class OutpaintMaskConfig:
    """Random training outpaint masks: hide a band along some sides of the image."""

    side_proba: float = 0.5  # each side is hidden with this probability (at least one is)
    min_ratio: float = 0.1  # hidden band width as a fraction of the image width/height
    max_ratio: float = 0.4


def irregular_mask(height: int, width: int, rng: np.random.Generator, cfg: IrregularMaskConfig = IrregularMaskConfig()) -> np.ndarray:
    scale = min(height, width) / LAMA_BASE_SIZE
    mask = np.zeros((height, width), np.uint8)
    for stroke in range(int(rng.integers(cfg.min_times, cfg.max_times + 1))):
        x, y = int(rng.integers(width)), int(rng.integers(height))
        for _ in range(1 + int(rng.integers(5))):
            angle = 0.01 + int(rng.integers(cfg.max_angle))
            if stroke % 2 == 0:
                angle = 2 * math.pi - angle
            length = (10 + int(rng.integers(cfg.max_len))) * scale
            brush = max(1, round((5 + int(rng.integers(cfg.max_width))) * scale))
            end_x = int(np.clip(x + length * math.sin(angle), 0, width))
            end_y = int(np.clip(y + length * math.cos(angle), 0, height))
            cv2.line(mask, (x, y), (end_x, end_y), 255, brush)
            x, y = end_x, end_y
    return mask


def box_mask(height: int, width: int, rng: np.random.Generator, cfg: BoxMaskConfig = BoxMaskConfig()) -> np.ndarray:
    scale = min(height, width) / LAMA_BASE_SIZE
    margin = int(cfg.margin * scale)
    min_size = max(1, int(cfg.bbox_min_size * scale))
    max_size = min(int(cfg.bbox_max_size * scale), height - 2 * margin, width - 2 * margin)
    mask = np.zeros((height, width), np.uint8)
    if max_size <= min_size:  # tiny image: one box over the central area
        mask[margin : height - margin, margin : width - margin] = 255
        return mask
    for _ in range(int(rng.integers(cfg.min_times, cfg.max_times + 1))):
        bw, bh = int(rng.integers(min_size, max_size)), int(rng.integers(min_size, max_size))
        x0 = int(rng.integers(margin, width - margin - bw + 1))
        y0 = int(rng.integers(margin, height - margin - bh + 1))
        mask[y0 : y0 + bh, x0 : x0 + bw] = 255
    return mask


def inpaint_mask(height: int, width: int, rng: np.random.Generator, cfg: InpaintMaskConfig = InpaintMaskConfig()) -> np.ndarray:
    """A LaMa-style random training mask, (H, W) uint8 with 255 = hidden."""
    if rng.random() < cfg.irregular_proba:
        return irregular_mask(height, width, rng, cfg.irregular)
    return box_mask(height, width, rng, cfg.box)


def outpaint_mask_sides(height: int, width: int, left: float = 0.0, right: float = 0.0, top: float = 0.0, bottom: float = 0.0) -> np.ndarray:
    """Hide a band of the given fraction along each side (inference-time outpainting)."""
    for name, v in (("left", left), ("right", right), ("top", top), ("bottom", bottom)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"outpaint {name} fraction must be in [0, 1), got {v}")
    if left + right >= 1.0 or top + bottom >= 1.0:
        raise ValueError("outpaint bands would hide the whole image: left+right and top+bottom must be < 1")
    mask = np.full((height, width), 255, np.uint8)
    y0, y1 = round(top * height), height - round(bottom * height)
    x0, x1 = round(left * width), width - round(right * width)
    mask[y0:y1, x0:x1] = 0
    return mask


def outpaint_mask(height: int, width: int, rng: np.random.Generator, cfg: OutpaintMaskConfig = OutpaintMaskConfig()) -> np.ndarray:
    """A random training outpaint mask: bands hidden along a random non-empty set of sides."""
    sides = rng.random(4) < cfg.side_proba
    if not sides.any():
        sides[int(rng.integers(4))] = True
    ratios = rng.uniform(cfg.min_ratio, cfg.max_ratio, size=4) * sides
    return outpaint_mask_sides(height, width, *map(float, ratios))


def apply_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The cut-out: `rgb` with hidden pixels (mask > 0) set to black."""
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {rgb.shape[:2]}")
    return np.where(mask[:, :, None] > 0, np.uint8(0), rgb)
