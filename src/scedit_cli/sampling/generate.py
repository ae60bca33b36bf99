"""`sample` and `compose`: diffusers' Stable Diffusion pipelines with SCEdit tuners attached.

Nothing here re-implements a denoising loop: the base model's own diffusers
pipeline (StableDiffusionPipeline for SD 1.5 / 2.1, StableDiffusionXLPipeline
for SDXL) runs, with the tuners hooked onto its U-Net by `tuners.attach` and a
scheduler picked by name. What this module adds:

- jobs: one image per (prompt, seed[, weight variant]); each image has its own
  `torch.Generator`, so an image does not depend on the batch it ran in;
- CSC hint features: computed once per distinct condition image (batch 1) and
  cached; the tuners tile them over the batch and both halves of
  classifier-free guidance, so the hint encoder never runs inside the
  denoising loop;
- outputs: PNGs with their record embedded, `manifest.jsonl`, a contact sheet,
  and resume (see `manifest.py`).

Weights of the attached tuners (the editor's alpha, Eq. 7): SC-Tuners get
`tuner_scale`; in `sample` each CSC-Tuner gets its condition's scale
(`--control canny:photo.jpg:0.8`); in `compose` the CSC weights are normalised
to sum to 1 (Eq. 7) and then multiplied by `control_scale`. A weight of 0
switches a tuner off exactly (its edit is not computed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..console import progress, warn
from ..errors import SceditError
from ..fsutil import check_output_location
from ..models import BaseModel, load_base, same_base
from ..tuners import CSCTuner, SkipTuner, attach, detach, get_editor, load_tuner
from ..tuners.hub import resolve_tuner_source
from .controls import ControlSpec, file_digest, known_condition_names, load_control
from .grid import write_contact_sheet
from .masked import check_masked, output_size
from .manifest import fingerprint, is_done, save_png, write_manifest
from .prompts import PromptSpec
from .schedulers import make_scheduler

GRID_NAME = "grid.png"


@dataclass
class SampleSettings:
    """Everything besides prompts, tuners and controls that determines the images."""

    steps: int = 50
    scheduler: str = "ddim"
    guidance_scale: float = 7.5
    width: int | None = None
    height: int | None = None
    negative_prompt: str | None = None
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 1
    tuner_scale: float = 1.0
    control_scale: float = 1.0
    grid_max: int = 64
    overwrite: bool = False
    annotator_weights: str | None = None

    def validate(self) -> None:
        if self.steps < 1:
            raise SceditError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise SceditError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.guidance_scale < 0:
            raise SceditError(f"--guidance-scale must be >= 0, got {self.guidance_scale}")
        if not self.seeds:
            raise SceditError("give at least one --seed")
        if any(s < 0 for s in self.seeds):
            raise SceditError(f"seeds must be >= 0, got {list(self.seeds)}")
        if self.grid_max < 0:
            raise SceditError(f"--grid-max must be >= 0, got {self.grid_max}")


@dataclass
class Job:
    index: int
    prompt: str
    negative_prompt: str | None
    seed: int
    weights: tuple[float, ...]
    # per attached tuner: index into the run's control list (None for SC-Tuners)
    controls: tuple[int | None, ...]
    variant: int | None = None
    filename: str = ""

    def group_key(self):
        return (self.weights, self.controls)


@dataclass
class SampleResult:
    out: Path
    images: list[Path]
    generated: int
    skipped: int
    manifest: Path
    grid: Path | None
    seconds: float
    seconds_per_image: float | None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "images": [str(p) for p in self.images],
            "generated": self.generated,
            "skipped": self.skipped,
            "manifest": str(self.manifest),
            "grid": str(self.grid) if self.grid else None,
            "seconds": round(self.seconds, 3),
            "seconds_per_image": None if self.seconds_per_image is None else round(self.seconds_per_image, 4),
            **self.extra,
        }


# --- loading ---------------------------------------------------------------------------------


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SceditError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SceditError(f"device {device!r} asked for but no CUDA GPU is available; use --device cpu")
    return dev


def quiet_loaders() -> None:
    """Our own progress bar reports the run; the loaders' bars would only clutter stderr."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()


def load_model(model: str | BaseModel, device: str | None = "auto", dtype: str | None = None) -> BaseModel:
    if isinstance(model, BaseModel):
        return model
    quiet_loaders()
    dev = resolve_device(device)
    if dtype is None:
        dtype = "fp16" if dev.type == "cuda" else "fp32"
    base = load_base(model, dtype=dtype)
    base.pipeline.to(dev)
    return base


def load_tuners(paths: Sequence[str | Path | SkipTuner], base: BaseModel) -> list[SkipTuner]:
    """Load tuners (folders, files, Hub ids, tuner objects) for `base`; refuses tuners built for another
    U-Net layout or VAE factor, warns when a tuner records another base model."""
    tuners = []
    dtype = base.unet.dtype
    for p in paths:
        # OPs in the base's precision (a tuner object passed in is copied, not rounded).
        if isinstance(p, SkipTuner):
            tuner = p.ops_in(dtype)
        else:
            p = resolve_tuner_source(p)
            tuner = load_tuner(p, unet=base.unet).ops_in(dtype, copy=False)
        recorded = (getattr(tuner, "file_meta", None) or {}).get("base_model")
        if not same_base(recorded, base.source):
            warn(f"{p}: tuner was trained on base model {recorded!r}, not {base.source!r}; "
                 "its edits may not fit this base")
        if isinstance(tuner, CSCTuner) and tuner.config.hint_downscale != base.vae_scale_factor:
            raise SceditError(
                f"{p}: CSC-Tuner's hint encoder downsamples by {tuner.config.hint_downscale} but this base "
                f"model's VAE downsamples by {base.vae_scale_factor}: use a tuner trained for this base model"
            )
        if not isinstance(p, SkipTuner):
            tuner.source_path = str(p)
        tuners.append(tuner)
    conds = [t.config.condition for t in tuners if isinstance(t, CSCTuner)]
    dup = sorted({c for c in conds if conds.count(c) > 1})
    if dup:
        raise SceditError(
            f"several CSC-Tuners are trained for the same condition {dup[0]!r}; "
            "pass one tuner per condition (so each --control finds its tuner)"
        )
    return tuners


def check_inputs(tuners: Sequence, controls: Sequence[ControlSpec], out: str | Path) -> list[Path | SkipTuner]:
    """Fail on missing tuners and control files, or an output folder we cannot write, before the (slow) base
    model loads; returns the tuners with Hub ids resolved to their cached folders."""
    check_output_location(out, "--out")
    resolved = [t if isinstance(t, SkipTuner) else resolve_tuner_source(t) for t in tuners]
    for c in controls:
        if not c.path.is_file():
            raise SceditError(f"{c.path}: control image not found (--control {c.name}:{c.path})")
    check_masked(controls)
    return resolved


def _tuner_record(t: SkipTuner) -> dict:
    path = getattr(t, "source_path", None)
    rec = {"method": t.method, "path": path}
    if isinstance(t, CSCTuner):
        rec["condition"] = t.config.condition
    if path is not None:
        p = Path(path)
        w = p / "tuner.safetensors" if p.is_dir() else p
        rec["digest"] = file_digest(w) if w.is_file() else None
    else:
        rec["digest"] = "in-memory:" + fingerprint(
            {k: float(v.double().sum()) for k, v in t.state_dict().items()}
        )
    return rec


def bind_controls(tuners: list[SkipTuner], controls: Sequence[ControlSpec], allow_repeats: bool = False
                  ) -> dict[int, list[int]]:
    """For each CSC-Tuner (by position), the indices of the controls that feed it."""
    csc = {i: t.config.condition for i, t in enumerate(tuners) if isinstance(t, CSCTuner)}
    loaded = sorted(set(csc.values()))
    binding: dict[int, list[int]] = {i: [] for i in csc}
    for k, spec in enumerate(controls):
        match = [i for i, c in csc.items() if c == spec.name]
        if not match and spec.name == "outpaint":  # an inpainting tuner outpaints too (paper Fig. 10)
            match = [i for i, c in csc.items() if c == "inpaint"]
        if not match:
            known = known_condition_names()
            if spec.name not in known and spec.name not in loaded:
                raise SceditError(
                    f"--control {spec.name}:...: unknown condition {spec.name!r}; known conditions: "
                    f"{', '.join(known)}"
                )
            raise SceditError(
                f"--control {spec.name}:{spec.path}: no loaded CSC-Tuner was trained for {spec.name!r} "
                f"(loaded: {', '.join(loaded) or 'none'}); add its tuner with --tuner"
            )
        binding[match[0]].append(k)
    for i, ks in binding.items():
        name = csc[i]
        if not ks:
            raise SceditError(
                f"CSC-Tuner {getattr(tuners[i], 'source_path', i)} needs a {name!r} condition image: "
                f"pass --control {name}:IMAGE (or --control-map {name}:MAP)"
            )
        if len(ks) > 1 and not allow_repeats:
            raise SceditError(
                f"{len(ks)} condition images given for {name!r}; `scedit sample` takes one per condition "
                "(use `scedit compose` for several maps of one condition)"
            )
    repeated = [i for i, ks in binding.items() if len(ks) > 1]
    if len(repeated) > 1:
        raise SceditError(
            "only one condition may be given several images (one image per variant, Fig. 9a); got several for "
            + ", ".join(repr(csc[i]) for i in repeated)
        )
    return binding


# --- the run -----------------------------------------------------------------------------------


def _image_size(base: BaseModel, settings: SampleSettings) -> tuple[int, int]:
    default = base.unet.config.sample_size * base.vae_scale_factor
    width = settings.width or default
    height = settings.height or default
    for name, v in (("width", width), ("height", height)):
        if v < 8 or v % 8:
            raise SceditError(f"--{name} {v}: must be a positive multiple of 8")
    return width, height


class HintCache:
    """Hint features per (tuner, control image), computed once at batch 1 and reused."""

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
    pipe = base.pipeline
    area = (settings.width, settings.height)
    width, height = output_size(controls, area) or _image_size(base, settings)  # outpainting: the canvas
    new_scheduler = make_scheduler(settings.scheduler, pipe.scheduler)

    # Condition tensors: read/computed once, at the output size, for the tuner each control feeds.
    channels = {k: tuners[i].config.in_channels for j in jobs for i, k in enumerate(j.controls) if k is not None}
    loaded = {k: load_control(spec, width, height, channels.get(k, 3), settings.annotator_weights, area)
              for k, spec in enumerate(controls)}
    control_tensors = {k: c.tensor for k, c in loaded.items()}
    control_records = [spec.record() for spec in controls]

    run_settings = {
        "command": command,
        "model": base.source,
        "model_kind": "sdxl" if base.is_sdxl else "sd",
        "prediction_type": base.prediction_type,
        "dtype": str(base.unet.dtype).replace("torch.", ""),
        "steps": settings.steps,
        "scheduler": type(new_scheduler).__name__,
        "guidance_scale": settings.guidance_scale,
        "width": width,
        "height": height,
        "tuners": [_tuner_record(t) for t in tuners],
        "controls": control_records,
        "tuner_scale": settings.tuner_scale,
        "control_scale": settings.control_scale,
    }
    fp = fingerprint(run_settings)

    def record_for(job: Job) -> dict:
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

    records = {j.filename: record_for(j) for j in jobs}
    names = [j.filename for j in jobs]
    if len(set(names)) != len(names):
        raise SceditError("two images would get the same file name; give each prompt/seed once")

    pending = [j for j in jobs if settings.overwrite or not is_done(out / j.filename, records[j.filename])]
    done = [j.filename for j in jobs if j not in pending]
    out.mkdir(parents=True, exist_ok=True)

    batches: list[list[Job]] = []
    for job in pending:
        if batches and len(batches[-1]) < settings.batch_size and batches[-1][-1].group_key() == job.group_key():
            batches[-1].append(job)
        else:
            batches.append([job])

    hints = HintCache(tuners, control_tensors)
    finished = set(done)
    old_scheduler = pipe.scheduler
    editor = None
    t0 = time.perf_counter()
    try:
        pipe.scheduler = new_scheduler
        pipe.set_progress_bar_config(disable=True)
        if tuners:
            editor = attach(pipe.unet, tuners, [0.0] * len(tuners))
        with progress() as bar:
            img_task = bar.add_task("images", total=len(jobs), completed=len(done))
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
                            t.set_hints(hints.get(i, first.controls[i]) if first.weights[i] != 0 else None)
                generators = [torch.Generator("cpu").manual_seed(j.seed) for j in batch]
                call = dict(
                    prompt=[j.prompt for j in batch],
                    height=height,
                    width=width,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale,
                    generator=generators,
                    output_type="pil",
                    callback_on_step_end=on_step,
                )
                negs = [j.negative_prompt for j in batch]
                if any(n for n in negs):
                    call["negative_prompt"] = [n or "" for n in negs]
                images = pipe(**call).images
                for job, image in zip(batch, images):
                    save_png(image, out / job.filename, records[job.filename])
                    finished.add(job.filename)
                write_manifest(out, [records[n] for n in names if n in finished])
                bar.advance(img_task, len(batch))
    finally:
        pipe.scheduler = old_scheduler
        if editor is not None and get_editor(pipe.unet) is editor:
            detach(pipe.unet)
            for t in tuners:
                if isinstance(t, CSCTuner):
                    t.set_hints(None)
    seconds = time.perf_counter() - t0
    manifest = write_manifest(out, [records[n] for n in names if n in finished])
    images = [out / n for n in names]
    grid = None
    if settings.grid_max and images:
        shown = jobs[: settings.grid_max]
        panels = [[p for k in j.controls if k is not None for p in loaded[k].panels] for j in shown]
        if any(panels):  # inpaint/outpaint: input, mask, result per image
            rows = [row + [out / j.filename] for row, j in zip(panels, shown)]
            grid = write_contact_sheet([x for row in rows for x in row], out / GRID_NAME, cols=len(rows[0]),
                                       background=(128, 128, 128))  # white would merge with the masks
        else:
            grid = write_contact_sheet(images[: settings.grid_max], out / GRID_NAME, cols=grid_cols)
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


# --- the two library entry points ---------------------------------------------------------------


def _prompt_jobs(prompts: Sequence[PromptSpec | str], settings: SampleSettings):
    for p in prompts:
        spec = p if isinstance(p, PromptSpec) else None
        if spec is None:
            raise SceditError("prompts must be PromptSpec objects (see sampling.prompts.prompt_list)")
        seeds = spec.seeds or settings.seeds
        neg = spec.negative_prompt if spec.negative_prompt is not None else settings.negative_prompt
        for seed in seeds:
            yield spec, neg, seed


def _as_prompts(prompts) -> list[PromptSpec]:
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        out.append(p if isinstance(p, PromptSpec) else PromptSpec(i, str(p)))
    if not out:
        raise SceditError("no prompts given")
    return out


def sample(
    model: str | BaseModel,
    prompts: str | Sequence[str | PromptSpec],
    out: str | Path,
    tuners: Sequence[str | Path | SkipTuner] = (),
    controls: Sequence[ControlSpec] = (),
    settings: SampleSettings | None = None,
    device: str | None = "auto",
    dtype: str | None = None,
) -> SampleResult:
    """Generate one image per (prompt, seed) with the tuners attached; see the module docstring."""
    settings = settings or SampleSettings()
    settings.validate()
    prompts = _as_prompts(prompts)
    tuners = check_inputs(tuners, controls, out)
    base = load_model(model, device, dtype)
    loaded = load_tuners(tuners, base)
    binding = bind_controls(loaded, controls)
    weights, ctrl = [], []
    for i, t in enumerate(loaded):
        if isinstance(t, CSCTuner):
            k = binding[i][0]
            weights.append(controls[k].scale * settings.control_scale)
            ctrl.append(k)
        else:
            weights.append(settings.tuner_scale)
            ctrl.append(None)
    jobs = [
        Job(spec.index, spec.prompt, neg, seed, tuple(weights), tuple(ctrl), filename=f"{spec.index:05d}_s{seed}.png")
        for spec, neg, seed in _prompt_jobs(prompts, settings)
    ]
    return run_jobs(base, loaded, controls, jobs, settings, out, command="sample")


def normalise_weights(alphas: Sequence[float], names: Sequence[str]) -> list[float]:
    """Eq. 7 wants sum(alpha) = 1: weights are divided by their sum; negative or all-zero weights are refused."""
    for a, n in zip(alphas, names):
        if a < 0:
            raise SceditError(f"condition {n!r} has weight {a}: compose weights must be >= 0")
    total = float(sum(alphas))
    if total <= 0:
        raise SceditError("compose weights sum to 0: give at least one condition a weight > 0")
    return [a / total for a in alphas]


def compose(
    model: str | BaseModel,
    prompts: str | Sequence[str | PromptSpec],
    out: str | Path,
    tuners: Sequence[str | Path | SkipTuner],
    controls: Sequence[ControlSpec],
    settings: SampleSettings | None = None,
    sweep: int | None = None,
    device: str | None = "auto",
    dtype: str | None = None,
) -> SampleResult:
    """Several CSC-Tuners at once, weighted by alpha (Eq. 7).

    - default: one image per (prompt, seed), weights = the controls' scales normalised to sum 1;
    - one condition given several images (Fig. 9a, "same edges, many colour maps"): one image per image
      of that condition, in a row;
    - `sweep=N` with exactly two conditions (Fig. 9b): N images whose weights go from (1, 0) to (0, 1).

    The normalised weights are multiplied by `settings.control_scale`; SC-Tuners get `tuner_scale`.
    """
    settings = settings or SampleSettings()
    settings.validate()
    prompts = _as_prompts(prompts)
    if not controls:
        raise SceditError("compose needs at least one --control (or --control-map)")
    tuners = check_inputs(tuners, controls, out)
    base = load_model(model, device, dtype)
    loaded = load_tuners(tuners, base)
    binding = bind_controls(loaded, controls, allow_repeats=sweep is None)
    csc = [i for i, t in enumerate(loaded) if isinstance(t, CSCTuner)]

    # variants: (weights per tuner, control per tuner)
    variants: list[tuple[tuple[float, ...], tuple[int | None, ...]]] = []
    if sweep is not None:
        if sweep < 2:
            raise SceditError(f"--sweep {sweep}: need at least 2 images to interpolate")
        if len(csc) != 2:
            raise SceditError(f"--sweep interpolates between exactly two conditions; {len(csc)} given")
        a, b = csc
        for k in range(sweep):
            t = k / (sweep - 1)
            w = [settings.tuner_scale] * len(loaded)
            w[a] = (1 - t) * settings.control_scale
            w[b] = t * settings.control_scale
            ctrl = [binding.get(i, [None])[0] for i in range(len(loaded))]
            variants.append((tuple(w), tuple(ctrl)))
    else:
        repeated = next((i for i in csc if len(binding[i]) > 1), None)
        choices = binding[repeated] if repeated is not None else [None]
        for choice in choices:
            ctrl = [binding.get(i, [None])[0] for i in range(len(loaded))]
            if repeated is not None:
                ctrl[repeated] = choice
            alphas = normalise_weights([controls[ctrl[i]].scale for i in csc], [loaded[i].config.condition for i in csc])
            w = [settings.tuner_scale] * len(loaded)
            for i, a in zip(csc, alphas):
                w[i] = a * settings.control_scale
            variants.append((tuple(w), tuple(ctrl)))
    jobs = []
    for spec, neg, seed in _prompt_jobs(prompts, settings):
        for v, (w, ctrl) in enumerate(variants):
            jobs.append(Job(spec.index, spec.prompt, neg, seed, w, ctrl, variant=v,
                            filename=f"{spec.index:05d}_s{seed}_v{v:02d}.png"))
    result = run_jobs(base, loaded, controls, jobs, settings, out, grid_cols=len(variants), command="compose")
    result.extra["variants"] = [list(w) for w, _ in variants]
    return result
