"""Diffusers schedulers by name: `ddim`, `euler_a`, `DPMSolverMultistepScheduler`, ...

Any scheduler class that diffusers lists as compatible with the pipeline's own
scheduler can be named, by its class name (case-insensitive, with or without
the `Scheduler` suffix) or by one of the short aliases below. The new scheduler
is built with `from_config` from the pipeline's scheduler config, so the
model's prediction type (epsilon or v-prediction), beta schedule and
timestep spacing carry over.
"""

from __future__ import annotations

from ..errors import SceditError

ALIASES = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "plms": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
    "dpm++_2m": "DPMSolverMultistepScheduler",
    "dpm_single": "DPMSolverSinglestepScheduler",
    "dpm2": "KDPM2DiscreteScheduler",
    "dpm2_a": "KDPM2AncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
}


def compatible_schedulers(scheduler) -> dict[str, type]:
    classes = {type(scheduler)}
    classes.update(getattr(scheduler, "compatibles", []) or [])
    return {cls.__name__: cls for cls in classes}


def resolve_scheduler_class(name: str, scheduler) -> type:
    """The compatible scheduler class called `name` (class name or alias)."""
    available = compatible_schedulers(scheduler)
    key = name.strip()
    target = ALIASES.get(key.lower(), key)
    by_lower = {n.lower(): cls for n, cls in available.items()}
    for candidate in (target.lower(), target.lower() + "scheduler"):
        if candidate in by_lower:
            return by_lower[candidate]
    aliases = sorted(a for a, cls in ALIASES.items() if cls in available)
    raise SceditError(
        f"unknown scheduler {name!r} for this pipeline; choose one of {', '.join(aliases)} "
        f"or a class name: {', '.join(sorted(available))}"
    )


def make_scheduler(name: str, scheduler):
    """A new scheduler `name`, configured like `scheduler` (the pipeline's)."""
    cls = resolve_scheduler_class(name, scheduler)
    return cls.from_config(scheduler.config)
