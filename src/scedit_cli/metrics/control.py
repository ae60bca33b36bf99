"""Controllability: how closely generated images follow their condition maps.

The paper reports FID only; these measure the control itself. For each
generated image and each condition it was sampled with, the condition map the
model saw (recomputed with `sample`'s own `load_control_map`, at the image's
size) is compared with the same condition computed on the generated image
(inference settings, e.g. canny 100/200):

- canny: edge F1 between the two binary edge maps (optionally with a pixel
  tolerance: an edge pixel counts as matched if the other map has one within
  `tolerance` pixels, as in boundary benchmarks);
- color: mean absolute error between the two colour maps, on a 0..1 scale;
- depth, hed: mean absolute error between the two grey-level maps (0..1), when
  the detector weights are present;
- seg: 1 - pixel accuracy between the two ADE20K palette maps.

Other conditions (pose, inpaint, outpaint) have no metric here; images using
them are listed as not measured, with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import SceditError
from ..fsutil import read_jsonl
from ..images import to_rgb8

# condition -> (metric name, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "canny": ("edge_f1", True),
    "color": ("color_mae", False),
    "depth": ("depth_mae", False),
    "hed": ("hed_mae", False),
    "seg": ("seg_error", False),
}


def _binary(edges: np.ndarray) -> np.ndarray:
    a = np.asarray(edges)
    if a.ndim == 3:
        a = a.max(axis=2)
    return a > 127 if a.dtype == np.uint8 else a > 0.5


_FOOTPRINTS = ("disk", "square")


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
    if ref.shape != gen.shape:
        raise SceditError(f"edge maps differ in size: {ref.shape} vs {gen.shape}")
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


def map_mae(reference: np.ndarray, generated: np.ndarray) -> float:
    """Mean absolute difference of two maps of the same size, on a 0..1 scale (uint8 maps / 255)."""
    a, b = np.asarray(reference), np.asarray(generated)
    if a.shape != b.shape:
        raise SceditError(f"maps differ in size: {a.shape} vs {b.shape}")
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / scale)


def color_error(reference: np.ndarray, generated: np.ndarray) -> float:
    """Mean absolute error between two RGB colour maps, 0..1."""
    return map_mae(reference, generated)


def seg_error(reference: np.ndarray, generated: np.ndarray) -> float:
    """1 - the fraction of pixels whose palette colour (class) agrees."""
    a, b = np.asarray(reference), np.asarray(generated)
    if a.shape != b.shape:
        raise SceditError(f"segmentation maps differ in size: {a.shape} vs {b.shape}")
    same = (a == b).all(axis=2) if a.ndim == 3 else a == b
    return float(1.0 - same.mean())


def compare_maps(condition: str, reference: Image.Image, generated: Image.Image, tolerance: int = 0) -> dict:
    """The metric of `condition` between the map the model saw and the map of the generated image."""
    ref = np.asarray(to_rgb8(reference))
    gen = np.asarray(to_rgb8(generated))
    if condition == "canny":
        r = edge_f1(ref, gen, tolerance)
        return {"edge_f1": r["f1"], "edge_precision": r["precision"], "edge_recall": r["recall"]}
    if condition == "color":
        return {"color_mae": color_error(ref, gen)}
    if condition in ("depth", "hed"):
        return {f"{condition}_mae": map_mae(np.asarray(reference.convert("L")), np.asarray(generated.convert("L")))}
    if condition == "seg":
        return {"seg_error": seg_error(ref, gen)}
    raise SceditError(f"no controllability metric for condition {condition!r}; measured: {', '.join(METRICS)}")


# --- over a `scedit sample` output folder ---------------------------------------------------

@dataclass
class ControlRow:
    file: str
    condition: str
    control_image: str
    metrics: dict[str, float]


@dataclass
class ControlResult:
    folder: str
    images: int
    rows: list[ControlRow] = field(default_factory=list)
    summary: dict[str, dict] = field(default_factory=dict)  # condition -> {metric: mean, "count": n}
    not_measured: dict[str, str] = field(default_factory=dict)  # condition -> why

    def to_dict(self) -> dict:
        return asdict(self)


def _find_control_image(path: str, folder: Path) -> Path:
    p = Path(path).expanduser()
    for cand in (p, folder / p):
        if cand.is_file():
            return cand
    raise SceditError(
        f"control image {path} (listed in {folder / 'manifest.jsonl'}) not found, also not under {folder}; "
        "run `scedit eval --control` from the folder `scedit sample` ran in, or restore the file"
    )


def read_sample_manifest(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        raise SceditError(f"{folder}: no manifest.jsonl; --control needs the output folder of `scedit sample`")
    return [row for _, row in read_jsonl(manifest, "re-run `scedit sample`")]


def evaluate_controls(folder: str | Path, *, tolerance: int = 0, annotator_weights: str | Path | None = None,
                      on_image: Callable[[], None] | None = None) -> ControlResult:
    """Controllability of every image of a `scedit sample` output folder that used controls."""
    from ..conditions import compute_condition
    from ..sampling.controls import ControlSpec, load_control_map

    folder = Path(folder)
    records = read_sample_manifest(folder)
    result = ControlResult(folder=str(folder), images=0)
    values: dict[str, dict[str, list[float]]] = {}
    skip_errors: dict[str, str] = {}
    for rec in records:
        controls = [c for c in rec.get("controls") or [] if c]
        if "file" not in rec:
            raise SceditError(f"{folder / 'manifest.jsonl'}: a record has no 'file'; re-run `scedit sample`")
        if not controls:
            if on_image:
                on_image()
            continue
        image_path = folder / rec["file"]
        if not image_path.is_file():
            raise SceditError(f"{image_path}: listed in the manifest but missing; re-run `scedit sample` to resume")
        with Image.open(image_path) as im:
            generated = to_rgb8(im).copy()
        result.images += 1
        for c in controls:
            name = c.get("condition")
            if name not in METRICS:
                result.not_measured.setdefault(name, f"no controllability metric for {name!r}")
                continue
            if name in skip_errors:
                continue
            spec = ControlSpec(name, _find_control_image(c["image"], folder), float(c.get("scale", 1.0)),
                               c.get("input") == "map")
            try:
                ref_map = load_control_map(spec, generated.width, generated.height, weights=annotator_weights)
                gen_map = compute_condition(name, generated, weights=annotator_weights)
            except SceditError as e:
                if annotator_weights is None and name in ("depth", "hed", "seg"):
                    # Detector weights absent: said in the output, never silently dropped.
                    skip_errors[name] = str(e)
                    result.not_measured[name] = f"detector weights not available ({e})"
                    continue
                raise
            m = compare_maps(name, ref_map, gen_map.convert("RGB"), tolerance)
            result.rows.append(ControlRow(rec["file"], name, str(spec.path), m))
            for k, v in m.items():
                values.setdefault(name, {}).setdefault(k, []).append(v)
        if on_image:
            on_image()
    if not result.rows and not result.not_measured:
        raise SceditError(f"{folder}: no image in manifest.jsonl was sampled with a control (--control/--control-map)")
    for name, metrics in values.items():
        result.summary[name] = {k: float(np.mean(v)) for k, v in metrics.items()}
        result.summary[name]["count"] = len(next(iter(metrics.values())))
    return result
