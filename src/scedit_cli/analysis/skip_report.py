"""`analyze_skips`: run the skip analysis (see `skips.py`) and write its JSON and PNGs into one folder.

Outputs, all written atomically:

- `skips.json`: settings, the skip table (paper index j, encoder index,
  channels, downscale, consuming up block / resnet), per removal variant its
  change score (per image and mean) and U-Net output std, the per-timestep
  statistics of every skip, and the files below;
- `removal/<mode>-<variant>.png`: per variant, the unmodified images over the
  images with those skips removed, titled with the change score;
- `change.png`: the change scores as bars; `output_distribution.png`: density
  of the U-Net output values with all / half / no skips, per mode;
- `trajectory.png`, `ratio.png`: the statistics along the trajectory;
- `feature_maps.png`: channel-mean skip and backbone maps per skip at a few
  timesteps (first prompt and seed).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..console import progress
from ..fsutil import check_output_location, write_json_atomic
from . import skip_plots
from ..tuners import SkipLayout
from .settings import SkipAnalysisSettings
from .skips import (HIST_RANGE, change_scores, map_step_indices, removal_variants,
                    run_skip_analysis, skip_table)
from .skips import trajectory as trajectory_stats

JSON_NAME = "skips.json"


@dataclass
class SkipAnalysisResult:
    out: Path
    summary: dict
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"out": str(self.out), **self.summary, "files": self.files, "seconds": round(self.seconds, 2)}


def _finite(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


def analyze_skips(model, prompts, out: str | Path, settings: SkipAnalysisSettings | None = None,
                  device: str | None = "auto", dtype: str | None = None) -> SkipAnalysisResult:
    """Removal grids and scores, trajectory statistics and feature maps of `model`'s skips, into `out`."""
    from ..sampling.inputs import load_model
    from ..sampling.jobs import as_prompts

    settings = settings or SkipAnalysisSettings()
    settings.validate()
    prompts = as_prompts(prompts)
    out = check_output_location(out, "--out")
    t0 = time.perf_counter()
    base = load_model(model, device, dtype)
    images = sum(len(p.seeds or settings.seeds) for p in prompts)
    runs = images * (1 + len(removal_variants(SkipLayout.from_unet(base.unet), settings.modes)))
    with progress() as bar:
        task = bar.add_task("denoising steps", total=settings.steps * math.ceil(runs / settings.batch_size))
        run = run_skip_analysis(base, prompts, settings, on_step=lambda: bar.advance(task))
    removal = _removal(run)
    per_skip = trajectory_stats(run.trace, run.layout.num_skips)
    out.mkdir(parents=True, exist_ok=True)
    files = _write(run, settings, out, removal, per_skip)
    summary = _summary(run, settings, base.source, removal, per_skip)
    seconds = time.perf_counter() - t0
    write_json_atomic(out / JSON_NAME, {**summary, "trajectory": _trajectory(run, per_skip), "files": files,
                                        "seconds": round(seconds, 2)})
    files = {"json": str(out / JSON_NAME), **{k: str(out / v) for k, v in files.items()}}
    return SkipAnalysisResult(out, summary, files, seconds)


def _removal(run) -> list[dict]:
    scores = change_scores(run.images)
    rows = []
    for v, variant in enumerate(run.variants):
        if variant is None:
            continue
        out = run.trace.output.get(v)
        rows.append({"mode": variant.mode, "name": variant.name, "skips": list(variant.skips),
                     "change": round(float(np.mean(scores[v])), 6),
                     "change_per_image": [round(s, 6) for s in scores[v]],
                     "output_std": _finite(out.std() if out else None),
                     "grid": f"removal/{variant.label}.png"})
    return rows


def _summary(run, settings: SkipAnalysisSettings, source, removal: list[dict], per_skip: list[dict]) -> dict:
    base_out = run.trace.output.get(0)
    return {
        "model": str(source),
        "images": [{"prompt": p.prompt, "seed": seed} for p, seed in run.inputs],
        "settings": {**asdict(settings), "map_steps": settings.shown_steps, "width": run.size[0],
                     "height": run.size[1], "pipeline_calls": run.calls, "torch_threads": torch.get_num_threads()},
        "skips": [{**row, "mean_ratio": _finite(float(np.nanmean(traj["ratio"])))}
                  for row, traj in zip(skip_table(run.layout), per_skip)],
        "unmodified_output_std": _finite(base_out.std() if base_out else None),
        "removal": removal,
    }


def _trajectory(run, per_skip: list[dict]) -> dict:
    """The per-timestep statistics (b): long lists, in the JSON file only."""
    rows = [{k: [_finite(x) for x in v] if isinstance(v, list) else v for k, v in row.items()} for row in per_skip]
    return {"timesteps": run.trace.timesteps, "per_skip": rows}


def _write(run, settings: SkipAnalysisSettings, out: Path, removal: list[dict], per_skip: list[dict]
           ) -> dict[str, str]:
    files: dict[str, str] = {}
    variants = [v for v in run.variants if v is not None]
    for v, (variant, row) in enumerate(zip(variants, removal), 1):
        skips = ",".join(map(str, variant.skips))
        title = f"skips j={skips} replaced by {variant.mode}: change {row['change']:.3f}"
        skip_plots.removal_grid(run.images[0], run.images[v], title, out / row["grid"])
    files["removal"] = "removal"
    files["change"] = skip_plots.change_chart(removal, out / "change.png").name
    hists = {"unmodified": run.trace.hist[0]}
    for v, variant in enumerate(run.variants):
        if variant is not None and variant.name in ("all", "high-res-half", "low-res-half"):
            hists[f"{variant.name} -> {variant.mode}"] = run.trace.hist[v]
    files["output_distribution"] = skip_plots.output_distribution(hists, HIST_RANGE, out / "output_distribution.png").name
    table = skip_table(run.layout)
    files["trajectory"] = skip_plots.trajectory_plot(run.trace.timesteps, per_skip, table, out / "trajectory.png").name
    files["ratio"] = skip_plots.ratio_plot(run.trace.timesteps, per_skip, out / "ratio.png").name
    steps = map_step_indices(settings.steps, settings.shown_steps)
    files["feature_maps"] = skip_plots.feature_map_grid(run.trace.maps, steps, run.trace.timesteps,
                                                        run.layout.num_skips, out / "feature_maps.png").name
    return files


__all__ = ["SkipAnalysisResult", "analyze_skips"]
