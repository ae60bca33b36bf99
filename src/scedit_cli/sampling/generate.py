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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..conditions import MASKED_CONDITIONS
from ..errors import SceditError
from .binding import bind_controls, is_csc, tuner_facts
from .controls import ControlSpec
from .jobs import Job, SampleResult, SampleSettings, as_prompts, prompt_jobs
from .preflight import check_inputs
from .prompts import PromptSpec

if TYPE_CHECKING:
    from ..models import BaseModel
    from ..tuners import SkipTuner


def _load(model, tuners, device, dtype) -> tuple[BaseModel, list[SkipTuner]]:
    """The base model and the tuners on it. torch and diffusers load here, after every check of the
    options and inputs that needs neither (a mistake there is answered in a second)."""
    from .inputs import load_model, load_tuners

    base = load_model(model, device, dtype)
    return base, load_tuners(tuners, base)


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
    # The jobs are planned from the tuners' configs (`TunerFacts`), so their mistakes come before anything loads.
    facts = tuner_facts(tuners)
    rc = _run_controls(facts, controls, prompts)
    jobs = []
    for spec, neg, seed in prompt_jobs(prompts, settings):
        mine = rc.for_prompt(spec.index, rc.shared)
        weights = tuple(rc.controls[k].scale * settings.control_scale if is_csc(t) else settings.tuner_scale
                        for t, k in zip(facts, mine))
        jobs.append(Job(spec.index, spec.prompt, neg, seed, weights, mine, filename=f"{spec.index:05d}_s{seed}.png"))
    base, loaded = _load(model, tuners, device, dtype)
    from .run import run_jobs

    return run_jobs(base, loaded, rc.controls, jobs, settings, out, command="sample")


@dataclass
class _RunControls:
    """A run's condition images: the command's, then the prompts' own (scaled like the command's image of their
    condition, 1 without one, so weights stay the command's)."""

    controls: list[ControlSpec]
    binding: dict[int, list[int]]  # CSC-Tuner position -> indices of the command's images that feed it
    own: dict[int, dict[int, int]]  # prompt index -> {tuner position: index of that prompt's own image}
    shared: tuple[int | None, ...]  # per tuner: the command's (first) image, None for SC-Tuners and prompt-fed ones

    def for_prompt(self, index: int, ctrl: Sequence[int | None], keep: int | None = None) -> tuple[int | None, ...]:
        """`ctrl` with the prompt's own images put in, except for tuner `keep` (whose images make the variants)."""
        return tuple(k if i == keep else self.own[index].get(i, k) for i, k in enumerate(ctrl))


def _run_controls(tuners: Sequence, controls: Sequence[ControlSpec], prompts: Sequence[PromptSpec],
                  allow_repeats: bool = False) -> _RunControls:
    """The run's condition images bound to the tuners (`tuners`: tuner objects, or their `TunerFacts`)."""
    by_condition: dict[str, int] = {}
    for i, t in enumerate(tuners):
        if is_csc(t):
            by_condition.setdefault(t.config.condition, i)  # the tuner `bind_controls` gives a condition's images
    own: dict[int, dict[int, int]] = {}
    theirs: list[ControlSpec] = []
    for p in prompts:
        own[p.index] = {}
        for c in p.controls:
            i = by_condition.get(c.name)
            if i is None:
                continue  # a prompts file may carry maps for tuners this run does not load
            if c.name in MASKED_CONDITIONS:
                raise SceditError(f"prompt {p.index + 1} ({p.prompt[:40]!r}): per-prompt {c.name!r} images are not "
                                  f"supported; pass --control {c.name}:IMAGE with --mask / --extend")
            own[p.index][i] = len(controls) + len(theirs)
            theirs.append(c)
    # a tuner every prompt feeds needs no image from the command
    provided = {i for i in by_condition.values() if all(i in own[p.index] for p in prompts)}
    binding = bind_controls(tuners, controls, allow_repeats=allow_repeats, provided=provided)
    scale = {i: controls[ks[0]].scale for i, ks in binding.items() if ks}
    run = [*controls, *(replace(c, scale=scale.get(by_condition[c.name], 1.0)) for c in theirs)]
    shared = tuple(binding[i][0] if binding.get(i) else None for i in range(len(tuners)))
    return _RunControls(run, binding, own, shared)


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
    if sweep is not None and sweep < 2:
        raise SceditError(f"--sweep {sweep}: need at least 2 images to interpolate")
    tuners = check_inputs(tuners, [*controls, *(c for p in prompts for c in p.controls)], out)
    # The jobs are planned from the tuners' configs (`TunerFacts`), so their mistakes come before anything loads.
    facts = tuner_facts(tuners)
    csc = [i for i, t in enumerate(facts) if is_csc(t)]
    if sweep is not None and len(csc) != 2:
        raise SceditError(f"--sweep interpolates between exactly two conditions; {len(csc)} given")
    rc = _run_controls(facts, controls, prompts, allow_repeats=sweep is None)
    binding = rc.binding

    # variants: (weights per tuner, control per tuner)
    variants: list[tuple[tuple[float, ...], tuple[int | None, ...]]] = []
    repeated = None
    if sweep is not None:
        a, b = csc
        for k in range(sweep):
            t = k / (sweep - 1)
            w = [settings.tuner_scale] * len(facts)
            w[a] = (1 - t) * settings.control_scale
            w[b] = t * settings.control_scale
            variants.append((tuple(w), rc.shared))
    else:
        repeated = next((i for i in csc if len(binding[i]) > 1), None)
        choices = binding[repeated] if repeated is not None else [None]
        for choice in choices:
            ctrl = list(rc.shared)
            if repeated is not None:
                ctrl[repeated] = choice
            alphas = normalise_weights([1.0 if ctrl[i] is None else controls[ctrl[i]].scale for i in csc],
                                       [facts[i].config.condition for i in csc])
            w = [settings.tuner_scale] * len(facts)
            for i, a in zip(csc, alphas):
                w[i] = a * settings.control_scale
            variants.append((tuple(w), tuple(ctrl)))
    jobs = []
    for spec, neg, seed in prompt_jobs(prompts, settings):
        for v, (w, ctrl) in enumerate(variants):
            mine = rc.for_prompt(spec.index, ctrl, keep=repeated)
            jobs.append(Job(spec.index, spec.prompt, neg, seed, w, mine, variant=v,
                            filename=f"{spec.index:05d}_s{seed}_v{v:02d}.png"))
    base, loaded = _load(model, tuners, device, dtype)
    from .run import run_jobs

    result = run_jobs(base, loaded, rc.controls, jobs, settings, out, grid_cols=len(variants), command="compose")
    result.extra["variants"] = [list(w) for w, _ in variants]
    return result
