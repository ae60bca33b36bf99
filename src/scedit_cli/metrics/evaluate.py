"""`evaluate`: what `scedit eval` measures, as one library call.

Generated images (FID against a reference, controllability of a `scedit sample` folder) and a
training recipe (trainable parameters, peak training memory, step time); the CLI only parses its
options into `EvalSettings`, shows progress and prints the `EvalResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .control import ControlResult
from .eval_settings import EvalSettings
from .fid import FIDResult
from .recipe import RecipeMeasurement


@dataclass
class EvalResult:
    """The measures asked for (the others None); `to_dict()` is what `--json` and `--out` hold."""

    fid: FIDResult | None = None
    control: ControlResult | None = None
    recipe: RecipeMeasurement | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out: dict = {}
        if self.fid is not None:
            out["fid"] = self.fid.to_dict()
        if self.control is not None:
            out["control"] = self.control.to_dict()
        if self.recipe is not None:
            out["recipe"] = self.recipe.to_dict()
        return out


def default_report_dir(generated: Path) -> Path:
    """`out/samples` -> `out/samples-control`: beside the sample folder, never inside it."""
    resolved = Path(generated).resolve()
    return resolved.with_name(resolved.name + "-control")


def evaluate(s: EvalSettings, *, fid_progress: Callable | None = None,
             on_control: Callable[[str, int], None] | None = None) -> EvalResult:
    """Measure what `s` asks for. `fid_progress`: a progress-bar factory for FID's feature passes;
    `on_control(kind, n)`: ('start', images) once, then ('image', 1) per image evaluated."""
    s.validate()
    result = EvalResult()
    if s.fid:
        from .fid import compute_fid

        result.fid = compute_fid(s.generated, s.reference, weights=s.inception_weights, dims=s.dims,
                                 batch_size=s.batch_size, num_workers=s.workers, device=s.device,
                                 cache_dir=s.stats_cache, use_cache=s.use_cache, progress_factory=fid_progress)
        result.warnings += result.fid.warnings
    if s.control:
        from .control import evaluate_controls, read_sample_manifest

        if on_control is not None:
            on_control("start", len(read_sample_manifest(s.generated)))
        result.control = evaluate_controls(
            s.generated, tolerance=s.edge_tolerance, annotator_weights=s.annotator_weights,
            pose_threshold=s.pose_threshold, detect_resolution=s.detect_resolution,
            report_dir=s.report_dir if s.report_dir is not None else default_report_dir(s.generated),
            worst=s.worst, on_image=None if on_control is None else lambda: on_control("image", 1))
    if s.measures_recipe:
        from ..bench.specs import BenchSettings
        from .recipe import measure_recipe

        bench = BenchSettings(device=s.device, steps=s.steps, warmup=s.warmup, batch=s.batch,
                              resolution=s.resolution)
        result.recipe = measure_recipe(s.recipe, bench, memory=s.memory, timing=s.timing,
                                       overrides=list(s.overrides))
    return result


__all__ = ["EvalResult", "EvalSettings", "default_report_dir", "evaluate"]
