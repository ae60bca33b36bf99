"""Controllability metrics between two condition maps of one image, as ControlNet++ measures them.

The reference is the map the model was given; the other is the same detector
run on the generated image. Each function takes two maps of the same size
(numpy arrays or PIL images, uint8 0..255):

- canny: `edge_f1` (precision / recall / F1 of edge pixels, optional pixel tolerance);
- hed: `ssim` of the grey-level maps on a 0..1 scale (Wang et al. 2004: 11x11
  Gaussian window, sigma 1.5, K1 0.01, K2 0.03, mean over the valid window
  positions; skimage's `structural_similarity(gaussian_weights=True,
  use_sample_covariance=False)`). ControlNet++'s script uses torchmetrics'
  multi-scale SSIM, so its figures are not directly comparable;
- depth: `depth_rmse`, RMSE on a 0..255 scale after min-max normalising each
  map to 0..255 (MiDaS gives relative inverse depth, defined up to scale and
  shift; ControlNet++ compares the detector's own 0..255 maps, which are
  min-max normalised per image the same way);
- seg: `seg_iou`, mean IoU over the ADE20K classes present in either map
  (pixels get the class of the nearest ADE20K palette colour; the palette
  gives classes 6 and 48 the same grey, which therefore count as one); `SegTotals`
  accumulates intersections and unions for the dataset-level mIoU that
  ControlNet++ reports;
- color: `color_error`, mean absolute error on a 0..1 scale;
- pose: `metrics.pose.pose_pck`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SceditError

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def as_array(m, mode: str | None = None) -> np.ndarray:
    """A PIL image (converted to `mode`) or an array, as a numpy array."""
    from PIL import Image

    if isinstance(m, Image.Image):
        return np.asarray(m.convert(mode) if mode else m)
    return np.asarray(m)


def _same_size(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise SceditError(f"{what} differ in size: {a.shape} vs {b.shape}")


# --- canny -------------------------------------------------------------------------------------

_FOOTPRINTS = ("disk", "square")


def _binary(edges: np.ndarray) -> np.ndarray:
    a = np.asarray(edges)
    if a.ndim == 3:
        a = a.max(axis=2)
    return a > 127 if a.dtype == np.uint8 else a > 0.5


def _dilate(mask: np.ndarray, radius: int, footprint: str = "disk") -> np.ndarray:
    if radius <= 0:
        return mask
    import cv2

    size = (2 * radius + 1, 2 * radius + 1)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE if footprint == "disk" else cv2.MORPH_RECT, size)
    return cv2.dilate(mask.astype(np.uint8), k) > 0


def edge_f1(reference: np.ndarray, generated: np.ndarray, tolerance: int = 0,
            footprint: str = "disk") -> dict[str, float]:
    """Precision, recall and F1 of `generated` edges against `reference` edges.

    Maps are (H, W) or (H, W, C), uint8 (edge > 127), bool, or float (edge > 0.5).
    An edge pixel matches within `tolerance` px: inside a disk, or a square
    (Chebyshev distance, for tiny images where diagonal steps matter). Two
    empty maps agree perfectly (F1 = 1); one empty map gives F1 = 0.
    """
    ref, gen = _binary(reference), _binary(generated)
    _same_size(ref, gen, "edge maps")
    if tolerance < 0:
        raise SceditError(f"edge tolerance must be >= 0 pixels, got {tolerance}")
    if footprint not in _FOOTPRINTS:
        raise SceditError(f"edge footprint {footprint!r}: choose disk or square")
    n_ref, n_gen = int(ref.sum()), int(gen.sum())
    if n_ref == 0 and n_gen == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    if n_ref == 0 or n_gen == 0:
        return {"precision": 0.0 if n_gen else 1.0, "recall": 0.0 if n_ref else 1.0, "f1": 0.0}
    precision = float((gen & _dilate(ref, tolerance, footprint)).sum()) / n_gen
    recall = float((ref & _dilate(gen, tolerance, footprint)).sum()) / n_ref
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


# --- color -------------------------------------------------------------------------------------

def map_mae(reference: np.ndarray, generated: np.ndarray) -> float:
    """Mean absolute difference of two maps of the same size, on a 0..1 scale (uint8 maps / 255)."""
    a, b = np.asarray(reference), np.asarray(generated)
    _same_size(a, b, "maps")
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / scale)


def color_error(reference: np.ndarray, generated: np.ndarray) -> float:
    """Mean absolute error between two RGB colour maps, 0..1."""
    return map_mae(reference, generated)


# --- hed ---------------------------------------------------------------------------------------

def _grey(m) -> tuple[np.ndarray, bool]:
    """(H, W) float64 grey levels (RGB arrays: channel mean; PIL images: "L"), and whether it was uint8."""
    a = as_array(m, "L")
    was_uint8 = a.dtype == np.uint8
    a = a.astype(np.float64)
    return (a.mean(axis=2) if a.ndim == 3 else a), was_uint8


def _unit(m) -> np.ndarray:
    a, was_uint8 = _grey(m)
    return a / 255.0 if was_uint8 else a


def ssim(reference, generated) -> float:
    """Structural similarity of two grey-level maps (uint8 0..255 or float 0..1); see the module docstring."""
    import torch
    import torch.nn.functional as F

    a, b = _unit(reference), _unit(generated)
    _same_size(a, b, "maps")
    if min(a.shape) < SSIM_WINDOW:
        raise SceditError(f"SSIM needs maps of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape}")
    r = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]
    x = torch.from_numpy(a)[None, None]
    y = torch.from_numpy(b)[None, None]

    def blur(t):
        return F.conv2d(t, window)  # valid positions only

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


# --- depth -------------------------------------------------------------------------------------

def _normalised_0_255(m) -> np.ndarray:
    a, _ = _grey(m)
    lo, hi = a.min(), a.max()
    return np.zeros_like(a) if hi == lo else (a - lo) / (hi - lo) * 255.0


def depth_rmse(reference, generated) -> float:
    """RMSE of two depth maps, each min-max normalised to 0..255 (a flat map becomes 0)."""
    a, b = _normalised_0_255(reference), _normalised_0_255(generated)
    _same_size(a, b, "depth maps")
    return float(np.sqrt(np.mean((a - b) ** 2)))


# --- seg ---------------------------------------------------------------------------------------

def seg_labels(m) -> np.ndarray:
    """(H, W) ADE20K class indices of a palette-coloured map (each colour -> nearest palette colour)."""
    from ..conditions.palette import ADE20K_PALETTE

    a = as_array(m, "RGB")
    if a.ndim != 3 or a.shape[2] != 3:
        raise SceditError(f"a segmentation map must be RGB (ADE20K palette colours), got shape {a.shape}")
    code = (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]
    uniq, inverse = np.unique(code.ravel(), return_inverse=True)
    rgb = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1)
    palette = np.asarray(ADE20K_PALETTE, dtype=np.int64)
    nearest = ((rgb[:, None, :] - palette[None]) ** 2).sum(-1).argmin(axis=1)
    return nearest[inverse].reshape(code.shape)


@dataclass
class SegTotals:
    """Per-class intersections and unions summed over images: the dataset-level mIoU."""

    intersection: dict[int, int] = field(default_factory=dict)
    union: dict[int, int] = field(default_factory=dict)

    def add(self, intersection: dict[int, int], union: dict[int, int]) -> None:
        for c, v in intersection.items():
            self.intersection[c] = self.intersection.get(c, 0) + v
        for c, v in union.items():
            self.union[c] = self.union.get(c, 0) + v

    def miou(self) -> float | None:
        classes = [c for c, u in self.union.items() if u > 0]
        if not classes:
            return None
        return float(np.mean([self.intersection.get(c, 0) / self.union[c] for c in classes]))


def seg_iou(reference, generated) -> tuple[float, dict[int, int], dict[int, int]]:
    """(mIoU over the classes present in either map, intersection per class, union per class)."""
    a, b = seg_labels(reference), seg_labels(generated)
    _same_size(a, b, "segmentation maps")
    inter, union = {}, {}
    for c in np.union1d(np.unique(a), np.unique(b)).tolist():
        in_a, in_b = a == c, b == c
        inter[c] = int((in_a & in_b).sum())
        union[c] = int((in_a | in_b).sum())
    return float(np.mean([inter[c] / union[c] for c in union])), inter, union
