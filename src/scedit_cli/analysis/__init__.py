"""Analyses of a base model: what its skip connections carry (`scedit analyze skips`).

The names below are imported on first use (`lazy.lazy_exports`): the settings load without torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# name -> the submodule that defines it
_EXPORTS = {
    "SkipAnalysisResult": "skip_report",
    "analyze_skips": "skip_report",
    "MODES": "settings",
    "SkipAnalysisSettings": "settings",
    "SkipRemoval": "skips",
    "Variant": "skips",
    "removal_variants": "skips",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
