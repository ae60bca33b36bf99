"""Condition maps for controllable generation (paper appendix A.4).

The stable API that `prepare`, `train` and `sample` share:

    from scedit_cli.conditions import compute_condition, compute_condition_maps

    edges = compute_condition("canny", pil_image)                 # inference: 100/200
    edges = compute_condition("canny", pil_image, rng=rng)        # training: random thresholds
    colors = compute_condition("color", pil_image)                # 64x down, back up
    maps = compute_condition_maps("inpaint", pil_image, rng=rng)  # {"inpaint": cut-out, "inpaint_mask": mask}
    depth = compute_condition("depth", pil_image, weights="~/annotators")

Every map is a PIL image the size of the input: RGB for the condition itself,
"L" (255 = hidden) for masks. `rng` (a `numpy.random.Generator`) selects the
random training variant of a condition; `rng=None` is the deterministic
inference variant. `params` override a condition's settings (see `CONDITIONS`
for each condition's keys); unknown keys are an error, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from ..errors import SceditError
from ..images import to_gray8, to_rgb8
from ..values import finite_float
from . import canny as _canny
from . import color as _color
from . import masks as _masks


@dataclass(frozen=True)
class ConditionSpec:
    """One condition: its metadata columns and the settings it accepts."""

    name: str
    summary: str
    columns: tuple[str, ...]  # metadata.jsonl columns (and conditions/<column>/ folders) it writes
    params: tuple[str, ...]  # keys accepted in `params`
    learned: bool = False  # needs detector weights (see detectors.py)
    random_without_params: bool = False  # with an rng and no params, draws random training settings
    label_map: bool = False  # colours are labels (classes, limbs): resized nearest, never blended

    @property
    def primary(self) -> str:
        return self.columns[0]

    @property
    def masked(self) -> bool:
        """Fed as a masked cut-out plus its mask (paper A.4), one column each."""
        return len(self.columns) > 1

    @property
    def channels(self) -> int:
        """Channels of the condition tensor: the cut-out's 3 and the mask's 1, else an RGB map."""
        return 4 if self.masked else 3


CONDITIONS: dict[str, ConditionSpec] = {
    s.name: s
    for s in (
        ConditionSpec("canny", "Canny edges; 100/200 at inference, random thresholds for training", ("canny",), ("low", "high"), random_without_params=True),
        ConditionSpec("depth", "MiDaS (DPT-Hybrid) depth, controlnet-aux MidasDetector", ("depth",), ("detect_resolution",), learned=True),
        ConditionSpec("hed", "HED soft edges, controlnet-aux HEDdetector", ("hed",), ("detect_resolution",), learned=True),
        ConditionSpec("seg", "ADE20K semantic segmentation (UperNet), ADE20K palette", ("seg",), ("detect_resolution",), learned=True, label_map=True),
        ConditionSpec("pose", "OpenPose body keypoints, controlnet-aux OpenposeDetector", ("pose",), ("detect_resolution",), learned=True, label_map=True),
        ConditionSpec("color", "colour map: 64x bicubic downsample, nearest upsample", ("color",), ("ratio",)),
        ConditionSpec("inpaint", "LaMa-style random mask + masked cut-out", ("inpaint", "inpaint_mask"), ("mask",), random_without_params=True),
        ConditionSpec("outpaint", "bands hidden along image sides + masked cut-out", ("outpaint", "outpaint_mask"), ("left", "right", "top", "bottom"), random_without_params=True),
    )
}

# Conditions fed as a masked cut-out plus its mask (4 channels, see tensor.py).
MASKED_CONDITIONS = tuple(name for name, spec in CONDITIONS.items() if spec.masked)


def condition_channels(name: str) -> int:
    """Channels of condition `name`'s tensor; a condition outside the registry (maps read from a
    dataset column) is an RGB map."""
    return CONDITIONS[name].channels if name in CONDITIONS else 3


def resize_filter(name: str, is_mask: bool = False) -> int:
    """The PIL filter that resizes condition `name`'s maps: nearest for masks and label maps (their
    colours must not blend), else bilinear."""
    spec = CONDITIONS.get(name)
    return Image.NEAREST if is_mask or (spec is not None and spec.label_map) else Image.BILINEAR


def get_spec(name: str) -> ConditionSpec:
    try:
        return CONDITIONS[name]
    except KeyError:
        raise SceditError(f"unknown condition '{name}'; choose one of: {', '.join(CONDITIONS)}") from None


def _check_params(spec: ConditionSpec, params: Mapping[str, Any]) -> None:
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        allowed = ", ".join(spec.params) or "none"
        raise SceditError(f"condition '{spec.name}' has no setting {', '.join(map(repr, unknown))}; its settings are: {allowed}")


def _as_int(spec: ConditionSpec, params: Mapping[str, Any], key: str) -> int:
    try:
        return int(params[key])
    except (TypeError, ValueError):
        raise SceditError(f"condition '{spec.name}' setting {key}={params[key]!r} must be an integer") from None


def _as_float(spec: ConditionSpec, params: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    try:
        return finite_float(params.get(key, default))
    except (TypeError, ValueError):
        raise SceditError(f"condition '{spec.name}' setting {key}={params[key]!r} must be a finite number") from None


def _masked(name: str, rgb: np.ndarray, mask: np.ndarray) -> dict[str, Image.Image]:
    return {name: Image.fromarray(_masks.apply_mask(rgb, mask)), f"{name}_mask": Image.fromarray(mask)}


def compute_condition_maps(
    name: str,
    image: Image.Image,
    *,
    rng: np.random.Generator | None = None,
    params: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    device: str | None = None,
    compact: bool = False,
) -> dict[str, Image.Image]:
    """All maps of condition `name` for `image`, keyed by metadata column.

    For inpaint/outpaint that is the cut-out and its mask; for the others one map.
    Learned conditions load their detector once per process (cached) from
    `weights` (a folder) or the HF cache; see `detectors.py`.
    `compact=True` (what `scedit prepare` stores): canny as a 1-bit image, colour as a
    palette image; `to_rgb8` of each is the RGB map exactly.
    """
    spec = get_spec(name)
    params = dict(params or {})
    _check_params(spec, params)
    try:
        rgb_image = to_rgb8(image)
    except ValueError as e:
        raise SceditError(f"condition '{name}': {e}") from None

    if name == "canny":
        if "low" in params or "high" in params:
            low = _as_int(spec, params, "low") if "low" in params else _canny.INFERENCE_LOW
            high = _as_int(spec, params, "high") if "high" in params else _canny.INFERENCE_HIGH
        elif rng is not None:
            low, high = _canny.CannyRandomRange().sample(rng)
        else:
            low, high = _canny.INFERENCE_LOW, _canny.INFERENCE_HIGH
        try:
            return {"canny": (_canny.canny_bilevel if compact else _canny.canny)(rgb_image, low, high)}
        except ValueError as e:
            raise SceditError(str(e)) from None

    if name == "color":
        ratio = _as_int(spec, params, "ratio") if "ratio" in params else _color.DEFAULT_RATIO
        if ratio < 1:
            raise SceditError(f"condition 'color' setting ratio={ratio} must be >= 1")
        return {"color": (_color.color_map_palette if compact else _color.color_map)(rgb_image, ratio)}

    if name == "inpaint":
        rgb = np.asarray(rgb_image)
        if "mask" in params:
            mask_img = params["mask"]
            if not isinstance(mask_img, Image.Image):
                raise SceditError("condition 'inpaint' setting mask must be a PIL image (white = area to fill)")
            if mask_img.size != rgb_image.size:
                raise SceditError(f"inpaint mask size {mask_img.size} does not match the image size {rgb_image.size}")
            mask = np.where(np.asarray(to_gray8(mask_img)) > 127, 255, 0).astype(np.uint8)
        elif rng is not None:
            mask = _masks.inpaint_mask(rgb.shape[0], rgb.shape[1], rng)
        else:
            raise SceditError("condition 'inpaint' needs a mask (params={'mask': image}) or an rng for a random LaMa-style mask")
        return _masked("inpaint", rgb, mask)

    if name == "outpaint":
        rgb = np.asarray(rgb_image)
        h, w = rgb.shape[:2]
        if params:
            sides = {k: _as_float(spec, params, k) for k in spec.params}
            try:
                mask = _masks.outpaint_mask_sides(h, w, **sides)
            except ValueError as e:
                raise SceditError(str(e)) from None
        elif rng is not None:
            mask = _masks.outpaint_mask(h, w, rng)
        else:
            raise SceditError("condition 'outpaint' needs side fractions (left/right/top/bottom) or an rng for random bands")
        return _masked("outpaint", rgb, mask)

    # Learned detectors: imported lazily, they pull in torch and controlnet-aux.
    from . import detectors

    resolution = _as_int(spec, params, "detect_resolution") if "detect_resolution" in params else None
    detector = detectors.get_detector(name, weights=weights, device=device)
    return {spec.primary: detector.run([rgb_image], detect_resolution=resolution)[0]}


def compute_condition(
    name: str,
    image: Image.Image,
    *,
    rng: np.random.Generator | None = None,
    params: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    device: str | None = None,
) -> Image.Image:
    """The primary map of condition `name` for `image` (for inpaint/outpaint: the cut-out).

    Stable API for train and sample; see the module docstring.
    """
    spec = get_spec(name)
    return compute_condition_maps(name, image, rng=rng, params=params, weights=weights, device=device)[spec.primary]


def record_rng(seed: int, key: str) -> np.random.Generator:
    """The generator for one dataset record: depends only on (seed, key).

    Keying by record rather than by position makes a prepared dataset identical
    whatever the worker count, shard split or resume point.
    """
    import hashlib

    digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, digest])


__all__ = ["CONDITIONS", "MASKED_CONDITIONS", "ConditionSpec", "compute_condition", "compute_condition_maps",
           "condition_channels", "get_spec", "record_rng", "resize_filter"]
