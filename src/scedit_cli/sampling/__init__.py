"""Generation with trained tuners: `sample`, `compose`, and their pieces.

The names below are imported on first use (PEP 562): `sample` and `compose` check their options and
inputs before torch and the base model load (`preflight.py`), so a mistake costs a second.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# name -> the submodule that defines it
_EXPORTS = {
    "ControlSpec": "controls",
    "parse_control": "controls",
    "compose": "generate",
    "normalise_weights": "generate",
    "sample": "generate",
    "load_model": "inputs",
    "load_tuners": "inputs",
    "SampleResult": "jobs",
    "SampleSettings": "jobs",
    "PromptSpec": "prompts",
    "prompt_list": "prompts",
    "read_prompts": "prompts",
    "make_scheduler": "schedulers",
    "resolve_scheduler_class": "schedulers",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
