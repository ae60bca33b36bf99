"""SC-Tuner and CSC-Tuner, and attaching them to diffusers U-Nets."""

from .base import SkipTuner, TunerConfig
from .csc import CSCTuner, CSCTunerConfig
from .io import load_tuner, save_tuner
from .layout import SkipLayout
from .model import SkipEditor, attach, detach, get_editor
from .registry import TUNER_TYPES, build_tuner
from .sc import SCTuner, SCTunerConfig

__all__ = [
    "CSCTuner",
    "CSCTunerConfig",
    "SCTuner",
    "SCTunerConfig",
    "SkipEditor",
    "SkipLayout",
    "SkipTuner",
    "TUNER_TYPES",
    "TunerConfig",
    "attach",
    "build_tuner",
    "detach",
    "get_editor",
    "load_tuner",
    "save_tuner",
]
