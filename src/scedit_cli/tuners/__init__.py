"""SC-Tuner and CSC-Tuner, and attaching them to diffusers U-Nets.

The names below are imported on first use (PEP 562), so `scedit_cli.tuners.config` (the tuner
settings a recipe holds) loads without torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# name -> the submodule that defines it
_EXPORTS = {
    "SkipTuner": "base",
    "TunerConfig": "config",
    "SCTunerConfig": "config",
    "CSCTunerConfig": "config",
    "CSCTuner": "csc",
    "load_tuner": "io",
    "save_tuner": "io",
    "SkipLayout": "layout",
    "SkipEditor": "model",
    "attach": "model",
    "detach": "model",
    "get_editor": "model",
    "TUNER_TYPES": "registry",
    "build_tuner": "registry",
    "SCTuner": "sc",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
