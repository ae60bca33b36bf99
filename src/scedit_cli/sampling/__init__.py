"""Generation with trained tuners: `sample`, `compose`, and their pieces."""

from .controls import ControlSpec, parse_control
from .generate import compose, normalise_weights, sample
from .inputs import load_model, load_tuners
from .jobs import SampleResult, SampleSettings
from .prompts import PromptSpec, prompt_list, read_prompts
from .schedulers import make_scheduler, resolve_scheduler_class

__all__ = [
    "ControlSpec",
    "PromptSpec",
    "SampleResult",
    "SampleSettings",
    "compose",
    "load_model",
    "load_tuners",
    "make_scheduler",
    "normalise_weights",
    "parse_control",
    "prompt_list",
    "read_prompts",
    "resolve_scheduler_class",
    "sample",
]
