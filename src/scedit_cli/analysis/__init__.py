"""Analyses of a base model: what its skip connections carry (`scedit analyze skips`)."""

from .skip_report import SkipAnalysisResult, analyze_skips
from .skips import MODES, SkipAnalysisSettings, SkipRemoval, Variant, removal_variants

__all__ = ["MODES", "SkipAnalysisResult", "SkipAnalysisSettings", "SkipRemoval", "Variant", "analyze_skips",
           "removal_variants"]
