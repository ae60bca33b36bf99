"""Analytic scores for toy-world images: what was asked for vs what the pixels show.

Every image is read back without any learned model: pixels are classified to
the nearest palette colour, the background is the most common colour class,
the shape's pixels are the rest, and the shape is whichever filled template
(circle / square / triangle, fitted to the blob's bounding box) overlaps them
best. Works on any square image size; images are resampled to the 32-px
design grid first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .world import (
    BACKGROUNDS,
    COLOURS,
    GRID,
    POSITIONS,
    SHAPES,
    STRIPE_PERIOD,
    Scene,
    erode,
    shape_mask_grid,
    half_rows,
    scene_mask,
)

_NAMES = list(COLOURS) + list(BACKGROUNDS)
_PALETTE = np.array([COLOURS[c] for c in COLOURS] + [BACKGROUNDS[b] for b in BACKGROUNDS], np.float32)
_N_FG = len(COLOURS)


def to_grid(image) -> np.ndarray:
    """An RGB image (PIL, uint8 array, or float array in [0,1]) as float32 32x32x3 in 0..255."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        if image.size != (GRID, GRID):
            image = image.resize((GRID, GRID), Image.BOX)
        return np.asarray(image, np.float32)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    arr = arr.astype(np.float32)
    if arr.max() <= 1.0 + 1e-6 and np.issubdtype(np.asarray(image).dtype, np.floating):
        arr = arr * 255.0
    if arr.shape[0] != GRID:
        k = arr.shape[0] // GRID
        arr = arr[: k * GRID, : k * GRID].reshape(GRID, k, GRID, k, 3).mean(axis=(1, 3))
    return arr


def classify_pixels(grid: np.ndarray) -> np.ndarray:
    """Index into `_NAMES` (foreground colours, then backgrounds) of each pixel's nearest palette colour."""
    d = ((grid[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


@dataclass
class Reading:
    """What the analytic reader sees in one image."""

    colour: str | None
    background: str
    shape: str | None
    position: str | None
    mask: np.ndarray  # 32x32 bool, the shape's (filled) pixels
    painted: np.ndarray  # 32x32 bool, the pixels of the shape's colour
    shape_iou: float  # IoU of the best-fitting template with the filled blob


def _fill(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_closing, binary_fill_holes, label

    if not mask.any():
        return mask
    # keep the largest connected component after closing gaps (outline rings, stripes)
    closed = binary_closing(mask, structure=np.ones((5, 1), bool), border_value=0) | mask
    closed = binary_closing(closed, structure=np.ones((3, 3), bool), border_value=0) | closed
    filled = binary_fill_holes(closed)
    lab, n = label(filled)
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        filled = lab == (1 + int(sizes.argmax()))
    return filled


def _best_shape(mask: np.ndarray) -> tuple[str | None, float]:
    if mask.sum() < 4:
        return None, 0.0
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    d = max(x1 - x0 + 1, y1 - y0 + 1)
    cx, cy = (x0 + x1 + 1) / 2.0, (y0 + y1 + 1) / 2.0
    best, best_iou = None, -1.0
    for s in SHAPES:
        t = shape_mask_grid(s, cx, cy, int(d))
        iou = (t & mask).sum() / max((t | mask).sum(), 1)
        if iou > best_iou:
            best, best_iou = s, float(iou)
    return best, best_iou


def _position_of(mask: np.ndarray) -> str | None:
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    c = np.array([(xs.min() + xs.max() + 1) / 2.0, (ys.min() + ys.max() + 1) / 2.0])
    names = list(POSITIONS)
    d = [np.hypot(*(c - np.array(POSITIONS[p]))) for p in names]
    return names[int(np.argmin(d))]


def read_image(image) -> Reading:
    """Read colour, background, shape and position back from an image's pixels."""
    grid = to_grid(image)
    cls = classify_pixels(grid)
    counts = np.bincount(cls.ravel(), minlength=len(_NAMES))
    bg_idx = _N_FG + int(counts[_N_FG:].argmax())
    # The background is the most common background-palette class. The shape's
    # pixels are those clearly far from the background colour.
    dist_bg = np.sqrt(((grid - _PALETTE[bg_idx]) ** 2).sum(-1))
    painted = dist_bg > 60.0
    fg_counts = np.bincount(cls[painted].ravel(), minlength=len(_NAMES))[:_N_FG]
    colour = _NAMES[int(fg_counts.argmax())] if fg_counts.sum() else None
    filled = _fill(painted)
    shape, iou = _best_shape(filled)
    return Reading(
        colour=colour,
        background=_NAMES[bg_idx],
        shape=shape,
        position=_position_of(filled),
        mask=filled,
        painted=painted,
        shape_iou=iou,
    )


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else 1.0


def style_score(image, scene: Scene, style: str | None = None) -> float:
    """How much the shape looks drawn in `style` (default `scene.style`), in [0, 1].

    - solid: fraction of the shape's interior painted in the shape's colour;
    - outline: fraction of the interior (the shape eroded by 3 px) that is
      background-coloured, times the fraction of the 1-px rim that is painted
      (an empty image scores 0, a solid shape scores 0);
    - striped: agreement of the interior rows with a 2-on/2-off horizontal
      stripe pattern, best over the 4 phases (solid scores 0.5);
    - half: fraction of the shape's upper half (rows above its centre) that is
      painted, times the fraction of its lower half that is background (a solid
      shape scores 0, an empty image 0), best over the scene's filled template
      (its shape and size) shifted by up to 2 px each way (`_half_score`):
      a solid shape then scores ~0.34, an empty image 0.
    For the other styles the shape's region is the one read from the image when
    a shape is found, else the scene's ground-truth mask.
    """
    style = style or scene.style
    grid = to_grid(image)
    r = read_image(grid)
    region = r.mask if r.mask.sum() >= 16 else scene_mask(scene, GRID)
    fg = np.array(COLOURS[scene.colour], np.float32)
    bg = np.array(BACKGROUNDS[scene.background], np.float32)
    is_fg = ((grid - fg) ** 2).sum(-1) < ((grid - bg) ** 2).sum(-1)
    if style == "solid":
        inner = erode(region, 1)
        inner = inner if inner.any() else region
        return float(is_fg[inner].mean()) if inner.any() else 0.0
    if style == "outline":
        inner = erode(region, 3)
        rim = region & ~erode(region, 1)
        if not inner.any() or not rim.any():
            return 0.0
        return float((~is_fg[inner]).mean() * is_fg[rim].mean())
    if style == "striped":
        inner = erode(region, 1)
        if not inner.any():
            return 0.0
        ys = np.nonzero(inner)[0]
        best = 0.0
        for phase in range(STRIPE_PERIOD):
            want = ((ys + phase) % STRIPE_PERIOD) < STRIPE_PERIOD // 2
            best = max(best, float((is_fg[inner] == want).mean()))
        return best
    if style == "half":
        return _half_score(is_fg, scene)
    raise ValueError(f"unknown style {style!r}")


HALF_MAX_SHIFT = 2  # grid px: the asked-for scene's jitter (1) plus the base model's placement error (1)


def _half_score(is_fg: np.ndarray, scene: Scene) -> float:
    """Best `half` score of the scene's filled template shifted by up to HALF_MAX_SHIFT px each way.

    A `half` shape is not a full-shape blob, so the region read from the image cannot place the template; the
    shift search lets a shape drawn a pixel or two off the asked-for centre score as what it is. A solid shape
    still scores low: shifting the template down leaves at most HALF_MAX_SHIFT of the lower half's rows as
    background.
    """
    cx, cy = scene.centre
    best = 0.0
    for dy in range(-HALF_MAX_SHIFT, HALF_MAX_SHIFT + 1):
        rows = half_rows(cy + dy)[:, None]
        for dx in range(-HALF_MAX_SHIFT, HALF_MAX_SHIFT + 1):
            full = shape_mask_grid(scene.shape, cx + dx, cy + dy, scene.diameter)
            upper, lower = full & rows, full & ~rows
            if upper.any() and lower.any():
                best = max(best, float(is_fg[upper].mean() * (~is_fg[lower]).mean()))
    return best


def score_image(image, scene: Scene) -> dict:
    """Per-image analytic scores against the scene that was asked for.

    Keys: colour, background, shape, position (1.0 if read back right else 0.0),
    iou (IoU of the read shape region with the asked-for shape at the nominal
    position and size, without jitter), style (see `style_score`).
    """
    r = read_image(image)
    nominal = Scene(scene.shape, scene.colour, scene.background, scene.position, scene.size)
    return {
        "colour": float(r.colour == scene.colour),
        "background": float(r.background == scene.background),
        "shape": float(r.shape == scene.shape),
        "position": float(r.position == scene.position),
        "iou": mask_iou(r.mask, scene_mask(nominal, GRID)),
        "style": style_score(image, scene),
    }


def score_images(images: Sequence, scenes: Sequence[Scene]) -> dict:
    """Mean of `score_image` over pairs; also `all` = fraction right on colour, background, shape and position."""
    if len(images) != len(scenes):
        raise ValueError(f"{len(images)} images for {len(scenes)} scenes")
    rows = [score_image(im, sc) for im, sc in zip(images, scenes)]
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
    if rows:
        out["all"] = float(np.mean([all(r[k] == 1.0 for k in ("colour", "background", "shape", "position")) for r in rows]))
        out["n"] = len(rows)
    return out


def edge_f1(pred: np.ndarray, target: np.ndarray, tolerance: int = 1) -> float:
    """F1 of two binary edge maps; an edge pixel counts as matched within `tolerance` px (Chebyshev).

    `metrics.control_maps.edge_f1` with a square footprint (on 32-px toy images a
    diagonal step is one pixel). Both maps empty -> 1.0; one empty -> 0.0.
    """
    from ..metrics.control_maps import edge_f1 as f1

    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape:
        raise ValueError(f"edge maps differ in shape: {p.shape} vs {t.shape}")
    return f1(t.astype(bool), p.astype(bool), tolerance, footprint="square")["f1"]


__all__ = [
    "Reading",
    "read_image",
    "score_image",
    "score_images",
    "style_score",
    "edge_f1",
    "mask_iou",
    "to_grid",
    "classify_pixels",
]
