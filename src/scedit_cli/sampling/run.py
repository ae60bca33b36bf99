"""Running a list of jobs through the base model's own diffusers pipeline with the tuners attached:
PNGs with their record, the manifest, resume and the contact sheet (see the `generate` docstring)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import __version__
from ..console import progress
from ..errors import SceditError
from ..fsutil import check_output_location
from ..models import BaseModel
from ..tuners import CSCTuner, SkipTuner, attach, detach, get_editor
from ..conditions import MASKED_CONDITIONS
from .controls import ControlSpec, LoadedControl, load_control_map, map_to_tensor
from .grid import write_contact_sheet
from .inputs import tuner_record
from .jobs import Job, SampleResult, SampleSettings, image_size
from .manifest import fingerprint, is_done, save_png, write_manifest
from .masked import load_masked, output_size
from .schedulers import make_scheduler

GRID_NAME = "grid.png"


class HintCache:
    """Hint features per (tuner, control image), computed once at batch 1 and reused; a batch whose images
    have different control images gets theirs stacked in batch order."""

    def __init__(self, tuners, control_tensors):
        self.tuners = tuners
        self.control_tensors = control_tensors
        self.cache: dict[tuple[int, int], dict[int, torch.Tensor]] = {}
        self.encoder_calls = 0

    def get(self, tuner_index: int, control_index: int):
        key = (tuner_index, control_index)
        if key not in self.cache:
            tuner = self.tuners[tuner_index]
            param = next(tuner.parameters())
            with torch.no_grad():
                cond = self.control_tensors[control_index].to(param.device)
                self.cache[key] = tuner.encode_condition(cond)
            self.encoder_calls += 1
        return self.cache[key]

    def for_batch(self, tuner_index: int, control_indices: Sequence[int]) -> dict[int, torch.Tensor]:
        if len(set(control_indices)) == 1:
            return self.get(tuner_index, control_indices[0])  # tiled over the batch by the tuner
        per_image = [self.get(tuner_index, k) for k in control_indices]
        return {skip: torch.cat([h[skip] for h in per_image]) for skip in per_image[0]}


def load_control(spec: ControlSpec, width: int, height: int, channels: int, weights: str | Path | None = None,
                 area: tuple[int | None, int | None] = (None, None)) -> LoadedControl:
    """The condition tensor of `spec` at the output size, for a tuner that reads `channels` channels.

    `area`: --width/--height as given, the size of an outpainting image inside its canvas.
    """
    if spec.name in MASKED_CONDITIONS:
        return load_masked(spec, width, height, channels, area)
    return LoadedControl(map_to_tensor(load_control_map(spec, width, height, weights=weights), channels))


def run_jobs(
    base: BaseModel,
    tuners: list[SkipTuner],
    controls: Sequence[ControlSpec],
    jobs: list[Job],
    settings: SampleSettings,
    out: str | Path,
    grid_cols: int | None = None,
    command: str = "sample",
) -> SampleResult:
    """Generate every job not already in `out`; write PNGs, the manifest and the contact sheet."""
    settings.validate()
    out = check_output_location(out, "--out")
    area = (settings.width, settings.height)
    width, height = output_size(controls, area) or image_size(base, settings)  # outpainting: the canvas
    scheduler = make_scheduler(settings.scheduler, base.pipeline.scheduler)

    # Condition tensors: read/computed once, at the output size, for the tuner each control feeds.
    channels = {k: tuners[i].config.in_channels for j in jobs for i, k in enumerate(j.controls) if k is not None}
    loaded = {k: load_control(spec, width, height, channels.get(k, 3), settings.annotator_weights, area)
              for k, spec in enumerate(controls)}
    run_settings = _run_settings(command, base, tuners, controls, settings, scheduler, width, height)
    fp = fingerprint(run_settings)
    records = {j.filename: _record(j, controls, fp, run_settings) for j in jobs}
    names = [j.filename for j in jobs]
    if len(set(names)) != len(names):
        raise SceditError("two images would get the same file name; give each prompt/seed once")

    pending = [j for j in jobs if settings.overwrite or not is_done(out / j.filename, records[j.filename])]
    done = [j.filename for j in jobs if j not in pending]
    out.mkdir(parents=True, exist_ok=True)
    hints = HintCache(tuners, {k: c.tensor for k, c in loaded.items()})
    finished = set(done)
    t0 = time.perf_counter()
    _generate(base.pipeline, scheduler, tuners, hints, _batches(pending, settings.batch_size), settings,
              (width, height), len(jobs), len(done),
              lambda batch, images: _save(out, batch, images, records, names, finished))
    seconds = time.perf_counter() - t0
    manifest = write_manifest(out, [records[n] for n in names if n in finished])
    images = [out / n for n in names]
    grid = _contact_sheet(out, jobs, images, loaded, settings.grid_max, grid_cols)
    return SampleResult(
        out=out,
        images=images,
        generated=len(pending),
        skipped=len(done),
        manifest=manifest,
        grid=grid,
        seconds=seconds,
        seconds_per_image=seconds / len(pending) if pending else None,
        extra={"hint_encoder_calls": hints.encoder_calls, "fingerprint": fp},
    )


def _run_settings(command, base, tuners, controls, settings, scheduler, width, height) -> dict:
    """What determines every image of the run (its fingerprint decides what resume may keep)."""
    return {
        "command": command,
        "model": base.source,
        "model_kind": "sdxl" if base.is_sdxl else "sd",
        "prediction_type": base.prediction_type,
        "dtype": str(base.unet.dtype).replace("torch.", ""),
        "steps": settings.steps,
        "scheduler": type(scheduler).__name__,
        "guidance_scale": settings.guidance_scale,
        "width": width,
        "height": height,
        "tuners": [tuner_record(t) for t in tuners],
        "controls": [spec.record() for spec in controls],
        "tuner_scale": settings.tuner_scale,
        "control_scale": settings.control_scale,
    }


def _record(job: Job, controls, fp: str, run_settings: dict) -> dict:
    return {
        "file": job.filename,
        "index": job.index,
        "variant": job.variant,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "weights": list(job.weights),
        "controls": [None if c is None else controls[c].describe() for c in job.controls],
        "fingerprint": fp,
        "settings": run_settings,
        "scedit_version": __version__,
    }


def _batches(pending: list[Job], batch_size: int) -> list[list[Job]]:
    """Jobs with the same tuner weights, in order, up to `batch_size` per batch (control images may differ:
    each image gets its own hints)."""
    groups: dict[tuple, list[Job]] = {}
    for job in pending:
        groups.setdefault(job.weights, []).append(job)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def _save(out: Path, batch: list[Job], images, records: dict, names: list[str], finished: set) -> None:
    """A batch's PNGs, then the manifest of every image finished so far (an interrupted run resumes)."""
    for job, image in zip(batch, images):
        save_png(image, out / job.filename, records[job.filename])
        finished.add(job.filename)
    write_manifest(out, [records[n] for n in names if n in finished])


def _generate(pipe, scheduler, tuners, hints: HintCache, batches: list[list[Job]], settings: SampleSettings,
              size: tuple[int, int], total: int, done: int, on_batch) -> None:
    """Run the batches through `pipe` with `scheduler` and the tuners attached (each batch with its
    weights and hints); the pipeline's scheduler and U-Net are as before afterwards."""
    width, height = size
    old_scheduler = pipe.scheduler
    editor = None
    try:
        pipe.scheduler = scheduler
        pipe.set_progress_bar_config(disable=True)
        if tuners:
            editor = attach(pipe.unet, tuners, [0.0] * len(tuners))
        with progress() as bar:
            img_task = bar.add_task("images", total=total, completed=done)
            step_task = bar.add_task("denoising steps", total=settings.steps * len(batches))

            def on_step(_pipe, _i, _t, kwargs):
                bar.advance(step_task)
                return kwargs

            for batch in batches:
                first = batch[0]
                if editor is not None:
                    editor.set_weights(first.weights)
                    for i, t in enumerate(tuners):
                        if isinstance(t, CSCTuner):
                            t.set_hints(hints.for_batch(i, [j.controls[i] for j in batch]) if first.weights[i] != 0
                                        else None)
                call = dict(
                    prompt=[j.prompt for j in batch],
                    height=height,
                    width=width,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale,
                    generator=[torch.Generator("cpu").manual_seed(j.seed) for j in batch],
                    output_type="pil",
                    callback_on_step_end=on_step,
                )
                negs = [j.negative_prompt for j in batch]
                if any(n for n in negs):
                    call["negative_prompt"] = [n or "" for n in negs]
                on_batch(batch, pipe(**call).images)
                bar.advance(img_task, len(batch))
    finally:
        pipe.scheduler = old_scheduler
        if editor is not None and get_editor(pipe.unet) is editor:
            detach(pipe.unet)
            for t in tuners:
                if isinstance(t, CSCTuner):
                    t.set_hints(None)


def _contact_sheet(out: Path, jobs: list[Job], images: list[Path], loaded: dict, grid_max: int,
                   grid_cols: int | None) -> Path | None:
    if not grid_max or not images:
        return None
    shown = jobs[:grid_max]
    panels = [[p for k in j.controls if k is not None for p in loaded[k].panels] for j in shown]
    if any(panels):  # inpaint/outpaint: input, mask, result per image
        rows = [row + [out / j.filename] for row, j in zip(panels, shown)]
        return write_contact_sheet([x for row in rows for x in row], out / GRID_NAME, cols=len(rows[0]),
                                   background=(128, 128, 128))  # white would merge with the masks
    return write_contact_sheet(images[:grid_max], out / GRID_NAME, cols=grid_cols)
