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
- per-prompt condition images (`PromptSpec.controls`, a prompts file's
  `control_map` / `control`): each image gets its prompt's own map, and
  images with different maps still run in one batch;
- outputs: PNGs with their record embedded, `manifest.jsonl`, a contact sheet,
  and resume (see `manifest.py`).

Weights of the attached tuners (the editor's alpha, Eq. 7): SC-Tuners get
`tuner_scale`; in `sample` each CSC-Tuner gets its condition's scale
(`--control canny:photo.jpg:0.8`); in `compose` the CSC weights are normalised
to sum to 1 (Eq. 7) and then multiplied by `control_scale`. A weight of 0
switches a tuner off exactly (its edit is not computed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..conditions import MASKED_CONDITIONS
from ..errors import SceditError
from ..models import BaseModel
from ..tuners import CSCTuner, SkipTuner
from .controls import ControlSpec
from .inputs import bind_controls, check_inputs, load_model, load_tuners
from .jobs import Job, SampleResult, SampleSettings, as_prompts, prompt_jobs
from .prompts import PromptSpec
from .run import run_jobs


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
    prompts = as_prompts(prompts)
    tuners = check_inputs(tuners, [*controls, *(c for p in prompts for c in p.controls)], out)
    base = load_model(model, device, dtype)
    loaded = load_tuners(tuners, base)
    binding = bind_controls(loaded, controls, provided=_provided_by_prompts(loaded, prompts))
    run_controls, own = _prompt_controls(prompts, loaded, controls, binding)
    ctrl = [binding[i][0] if binding.get(i) else None for i in range(len(loaded))]
    jobs = []
    for spec, neg, seed in prompt_jobs(prompts, settings):
        mine = tuple(own[spec.index].get(i, k) for i, k in enumerate(ctrl))
        weights = tuple(run_controls[k].scale * settings.control_scale if isinstance(t, CSCTuner) else settings.tuner_scale
                        for t, k in zip(loaded, mine))
        jobs.append(Job(spec.index, spec.prompt, neg, seed, weights, mine, filename=f"{spec.index:05d}_s{seed}.png"))
    return run_jobs(base, loaded, run_controls, jobs, settings, out, command="sample")


def _provided_by_prompts(loaded: Sequence[SkipTuner], prompts: Sequence[PromptSpec]) -> set[int]:
    """CSC-Tuners (by position) for which every prompt has its own image: they need no command-wide one."""
    return {i for i, t in enumerate(loaded) if isinstance(t, CSCTuner)
            and all(any(c.name == t.config.condition for c in p.controls) for p in prompts)}


def _prompt_controls(prompts: Sequence[PromptSpec], loaded: Sequence[SkipTuner], controls: Sequence[ControlSpec],
                     binding: dict[int, list[int]]) -> tuple[list[ControlSpec], dict[int, dict[int, int]]]:
    """The run's controls (the command's, then the prompts' own) and, per prompt index, tuner position ->
    control index for the tuners that prompt feeds itself. A prompt's image takes the scale of the command's
    control for its condition (1 without one), so weights stay the command's."""
    run_controls = list(controls)
    by_condition = {t.config.condition: i for i, t in enumerate(loaded) if isinstance(t, CSCTuner)}
    own: dict[int, dict[int, int]] = {}
    for p in prompts:
        own[p.index] = {}
        for c in p.controls:
            i = by_condition.get(c.name)
            if i is None:
                continue  # a prompts file may carry maps for tuners this run does not load
            if c.name in MASKED_CONDITIONS:
                raise SceditError(f"prompt {p.index + 1} ({p.prompt[:40]!r}): per-prompt {c.name!r} images are not "
                                  f"supported; pass --control {c.name}:IMAGE with --mask / --extend")
            scale = controls[binding[i][0]].scale if binding.get(i) else 1.0
            own[p.index][i] = len(run_controls)
            run_controls.append(replace(c, scale=scale))
    return run_controls, own


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
    prompts = as_prompts(prompts)
    if not controls and not any(p.controls for p in prompts):
        raise SceditError("compose needs at least one --control (or --control-map, or maps in the prompts file)")
    tuners = check_inputs(tuners, [*controls, *(c for p in prompts for c in p.controls)], out)
    base = load_model(model, device, dtype)
    loaded = load_tuners(tuners, base)
    binding = bind_controls(loaded, controls, allow_repeats=sweep is None,
                            provided=_provided_by_prompts(loaded, prompts))
    run_controls, own = _prompt_controls(prompts, loaded, controls, binding)
    csc = [i for i, t in enumerate(loaded) if isinstance(t, CSCTuner)]
    shared = [binding[i][0] if binding.get(i) else None for i in range(len(loaded))]

    # variants: (weights per tuner, control per tuner)
    variants: list[tuple[tuple[float, ...], tuple[int | None, ...]]] = []
    repeated = None
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
            variants.append((tuple(w), tuple(shared)))
    else:
        repeated = next((i for i in csc if len(binding[i]) > 1), None)
        choices = binding[repeated] if repeated is not None else [None]
        for choice in choices:
            ctrl = list(shared)
            if repeated is not None:
                ctrl[repeated] = choice
            alphas = normalise_weights([1.0 if ctrl[i] is None else controls[ctrl[i]].scale for i in csc],
                                       [loaded[i].config.condition for i in csc])
            w = [settings.tuner_scale] * len(loaded)
            for i, a in zip(csc, alphas):
                w[i] = a * settings.control_scale
            variants.append((tuple(w), tuple(ctrl)))
    jobs = []
    for spec, neg, seed in prompt_jobs(prompts, settings):
        for v, (w, ctrl) in enumerate(variants):
            # the prompt's own images, except for the condition whose images make the variants (Fig. 9a)
            mine = tuple(k if i == repeated else own[spec.index].get(i, k) for i, k in enumerate(ctrl))
            jobs.append(Job(spec.index, spec.prompt, neg, seed, w, mine, variant=v,
                            filename=f"{spec.index:05d}_s{seed}_v{v:02d}.png"))
    result = run_jobs(base, loaded, run_controls, jobs, settings, out, grid_cols=len(variants), command="compose")
    result.extra["variants"] = [list(w) for w, _ in variants]
    return result
