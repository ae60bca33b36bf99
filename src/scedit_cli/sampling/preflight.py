"""What a sampling run checks before anything loads (the base model takes seconds to minutes, torch
itself seconds): the output folder, that each tuner is there (a Hub id is fetched or found in the
cache), that the control images are there and are images, and the mask options. Needs no torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import SceditError
from ..fsutil import check_output_location
from ..tuners.hub import resolve_tuner_source
from .controls import ControlSpec, check_image_header
from .masked import check_masked


def check_inputs(tuners: Sequence, controls: Sequence[ControlSpec], out: str | Path) -> list:
    """Fail on missing tuners and control files, or an output folder we cannot write; returns the
    tuners with paths and Hub ids resolved to local folders or files (tuner objects pass as they are)."""
    check_output_location(out, "--out")
    resolved = [resolve_tuner_source(t) if isinstance(t, (str, os.PathLike)) else t for t in tuners]
    for c in controls:
        if not c.path.is_file():
            raise SceditError(f"{c.path}: control image not found (--control {c.name}:{c.path})")
        check_image_header(c.path)
    check_masked(controls)
    return resolved
