"""Controllability: how closely generated images follow their condition maps (ControlNet++'s protocol).

The paper reports FID only; these measure the control itself. For each
generated image of a `scedit sample` / `compose` folder and each condition it
was sampled with, the condition map the model saw (recomputed with `sample`'s
own `load_control_map`, at the image's size) is compared with the same
condition's detector run on the generated image (inference settings, e.g.
canny 100/200):

| condition | metric (`control_maps`, `pose`) | better |
| --- | --- | --- |
| canny | edge F1 | higher |
| hed | SSIM of the soft-edge maps | higher |
| depth | RMSE of min-max normalised depth (0..255) | lower |
| seg | mIoU over the ADE20K classes present | higher |
| pose | PCK of the OpenPose keypoints at 0.05 x the longer side | higher |
| color | mean absolute colour-map error (0..1) | lower |

hed, depth, seg and pose need their detectors' weights (`--annotator-weights`
or the HF cache); without them the condition is listed as not measured, with
the missing-weights error. inpaint / outpaint have no metric here. The summary
has each metric's mean over images and, as ControlNet++ reports them,
dataset-level mIoU (intersections and unions summed over all images) and PCK
(over all keypoints). `report_dir` gets a per-image CSV, the summary JSON and a
PNG of the worst cases of each condition (`control_report.py`).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import SceditError
from ..fsutil import read_jsonl
from .control_maps import SegTotals, color_error, depth_rmse, edge_f1, seg_iou, ssim
from .pose import DEFAULT_PCK_THRESHOLD, pose_pck
from ..images import to_rgb8

# condition -> (primary metric, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "canny": ("edge_f1", True),
    "hed": ("hed_ssim", True),
    "depth": ("depth_rmse", False),
    "seg": ("seg_miou", True),
    "pose": ("pose_pck", True),
    "color": ("color_mae", False),
}


@dataclass
class DatasetTotals:
    """What the dataset-level figures sum over all images."""

    seg: SegTotals = field(default_factory=SegTotals)
    pose_matched: int = 0
    pose_reference: int = 0


def compare_maps(condition: str, reference: Image.Image, generated: Image.Image, tolerance: int = 0,
                 pose_threshold: float = DEFAULT_PCK_THRESHOLD, totals: DatasetTotals | None = None) -> dict:
    """The metrics of `condition` between the map the model saw and the map of the generated image."""
    reference, generated = to_rgb8(reference), to_rgb8(generated)
    if condition == "canny":
        r = edge_f1(np.asarray(reference), np.asarray(generated), tolerance)
        return {"edge_f1": r["f1"], "edge_precision": r["precision"], "edge_recall": r["recall"]}
    if condition == "color":
        return {"color_mae": color_error(np.asarray(reference), np.asarray(generated))}
    if condition == "hed":
        return {"hed_ssim": ssim(reference, generated)}
    if condition == "depth":
        return {"depth_rmse": depth_rmse(reference, generated)}
    if condition == "seg":
        miou, inter, union = seg_iou(reference, generated)
        if totals is not None:
            totals.seg.add(inter, union)
        return {"seg_miou": miou, "seg_classes": len(union)}
    if condition == "pose":
        m = pose_pck(reference, generated, pose_threshold)
        if totals is not None:
            totals.pose_matched += m.matched
            totals.pose_reference += m.reference
        return {"pose_pck": m.pck, "pose_keypoints": m.reference, "pose_keypoints_generated": m.generated}
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
    summary: dict[str, dict] = field(default_factory=dict)  # condition -> {metric: mean, "count": n, ...}
    not_measured: dict[str, str] = field(default_factory=dict)  # condition -> why
    settings: dict = field(default_factory=dict)
    report: dict[str, str] = field(default_factory=dict)  # kind -> file written

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class WorstCase:
    """One row of the worst-cases sheet: thumbnails of the reference map, the regenerated map, the image."""

    condition: str
    file: str
    metric: str
    value: float
    thumbs: tuple[Image.Image, Image.Image, Image.Image]


class WorstCases:
    """The k worst rows of each condition by its primary metric, kept as small thumbnails."""

    def __init__(self, k: int, cell: int = 256):
        self.k, self.cell = k, cell
        self._heaps: dict[str, list] = {}
        self._seq = itertools.count()

    def add(self, condition: str, file: str, metrics: dict, maps: tuple[Image.Image, Image.Image, Image.Image]):
        if self.k <= 0:
            return
        metric, higher_better = METRICS[condition]
        value = float(metrics[metric])
        badness = -value if higher_better else value
        heap = self._heaps.setdefault(condition, [])
        if len(heap) == self.k and badness <= heap[0][0]:
            return
        thumbs = []
        for m in maps:
            t = to_rgb8(m)
            t.thumbnail((self.cell, self.cell))
            thumbs.append(t)
        item = (badness, next(self._seq), WorstCase(condition, file, metric, value, tuple(thumbs)))
        (heapq.heappushpop if len(heap) == self.k else heapq.heappush)(heap, item)

    def cases(self) -> list[WorstCase]:
        """Worst first within each condition; conditions in METRICS order."""
        out = []
        for cond in (c for c in METRICS if c in self._heaps):
            out += [w for _, _, w in sorted(self._heaps[cond], key=lambda t: (-t[0], t[1]))]
        return out


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


def _summarise(result: ControlResult, values: dict[str, dict[str, list[float]]], totals: DatasetTotals) -> None:
    for name, metrics in values.items():
        result.summary[name] = {k: float(np.mean(v)) for k, v in metrics.items()}
        result.summary[name]["count"] = len(next(iter(metrics.values())))
    if "seg" in result.summary:
        result.summary["seg"]["seg_miou_dataset"] = totals.seg.miou()
    if "pose" in result.summary:
        ref = totals.pose_reference
        result.summary["pose"]["pose_pck_dataset"] = totals.pose_matched / ref if ref else None


def evaluate_controls(folder: str | Path, *, tolerance: int = 0, annotator_weights: str | Path | None = None,
                      pose_threshold: float = DEFAULT_PCK_THRESHOLD, detect_resolution: int | None = None,
                      report_dir: str | Path | None = None, worst: int = 8,
                      on_image: Callable[[], None] | None = None) -> ControlResult:
    """Controllability of every image of a `scedit sample` output folder that used controls.

    `detect_resolution`: the learned detectors' working resolution (default theirs, 512), for the
    reference and the generated image alike. With `report_dir`, also writes the per-image CSV, the
    summary JSON and (worst > 0) the sheet of the `worst` worst images of each condition.
    """
    from ..conditions import compute_condition, get_spec
    from ..sampling.controls import ControlSpec, load_control_map

    folder = Path(folder)
    if worst < 0:
        raise SceditError(f"--worst {worst}: give the number of worst images per condition to show (0 = none)")
    if not 0 < pose_threshold <= 1:
        raise SceditError(f"--pose-threshold {pose_threshold}: give a fraction of the image's longer side in (0, 1]")
    records = read_sample_manifest(folder)
    settings = {"edge_tolerance": tolerance, "pose_threshold": pose_threshold, "detect_resolution": detect_resolution,
                "annotator_weights": None if annotator_weights is None else str(annotator_weights)}
    result = ControlResult(folder=str(folder), images=0, settings=settings)
    values: dict[str, dict[str, list[float]]] = {}
    totals = DatasetTotals()
    worst_cases = WorstCases(worst)
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
            params = (("detect_resolution", detect_resolution),) if detect_resolution and get_spec(name).learned else ()
            spec = ControlSpec(name, _find_control_image(c["image"], folder), float(c.get("scale", 1.0)),
                               c.get("input") == "map", params)
            try:
                ref_map = load_control_map(spec, generated.width, generated.height, weights=annotator_weights)
                gen_map = compute_condition(name, generated, weights=annotator_weights,
                                            params=dict(params) or None).convert("RGB")
            except SceditError as e:
                if annotator_weights is None and get_spec(name).learned:
                    # Detector weights absent: said in the output, never silently dropped.
                    skip_errors[name] = str(e)
                    result.not_measured[name] = f"detector weights not available ({e})"
                    continue
                raise
            m = compare_maps(name, ref_map, gen_map, tolerance, pose_threshold, totals)
            result.rows.append(ControlRow(rec["file"], name, str(spec.path), m))
            worst_cases.add(name, rec["file"], m, (ref_map, gen_map, generated))
            for k, v in m.items():
                values.setdefault(name, {}).setdefault(k, []).append(v)
        if on_image:
            on_image()
    if not result.rows and not result.not_measured:
        raise SceditError(f"{folder}: no image in manifest.jsonl was sampled with a control (--control/--control-map)")
    _summarise(result, values, totals)
    if report_dir is not None:
        from .control_report import write_control_report

        result.report = write_control_report(result, Path(report_dir), worst_cases.cases())
    return result
