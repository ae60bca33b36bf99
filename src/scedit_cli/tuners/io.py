"""Tuner files: safetensors weights + a small JSON config, like peft's adapter files.

A tuner is saved as a folder holding `tuner.safetensors` and `tuner_config.json`.
The config is also embedded in the safetensors metadata, so a lone
`.safetensors` file loads too. Nothing is ever pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import SceditError
from ..fsutil import atomic_dir, write_json_atomic
from .base import SkipTuner
from .files import CONFIG_NAME, WEIGHTS_NAME, check_tuner_destination, read_tuner_meta
from .layout import SkipLayout
from .registry import build_tuner

FORMAT_VERSION = 1


def tuner_config_dict(tuner: SkipTuner, base: str | None = None, extra: dict | None = None) -> dict:
    return {
        "format": "scedit-tuner",
        "format_version": FORMAT_VERSION,
        "method": tuner.method,
        "config": tuner.config.to_dict(),
        "layout": tuner.layout.to_dict(),
        "base_model": base,
        "scedit_version": __version__,
        "trainable_parameters": tuner.trainable_parameters,
        **(extra or {}),
    }


def save_tuner(tuner: SkipTuner, path: str | Path, base: str | None = None, extra: dict | None = None) -> Path:
    """Write `tuner` to the folder `path`, replacing a tuner folder there as a whole: an interrupted
    save leaves the previous folder (weights and config that belong together) or none. A folder
    holding anything but a tuner is refused. Returns the folder."""
    path = Path(path)
    check_tuner_destination(path, True, "tuner folder")
    meta = tuner_config_dict(tuner, base, extra)
    state = {k: v.detach().to("cpu").contiguous() for k, v in tuner.state_dict().items()}
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"scedit": json.dumps(meta)})
        write_json_atomic(tmp / CONFIG_NAME, meta)
    return path


def load_tuner(path: str | Path, unet: torch.nn.Module | None = None, device="cpu",
               model_layout: SkipLayout | None = None) -> SkipTuner:
    """Load a tuner file; with `unet` (or `model_layout`, the skip layout of the model it is for),
    refuse it unless its skip layout matches."""
    path = Path(path)
    meta, weights = read_tuner_meta(path)
    method = meta["method"]
    try:
        layout = SkipLayout.from_dict(meta["layout"])
    except (KeyError, TypeError) as e:
        raise SceditError(f"{path}: tuner config has no valid `layout` ({e}); re-save the tuner") from None
    actual = model_layout if unet is None else SkipLayout.from_unet(unet)
    if actual is not None:
        if actual != layout:
            raise SceditError(
                f"{path}: tuner was trained on a U-Net with {layout.describe()}, but this U-Net has "
                f"{actual.describe()}: "
                f"use the base model it was trained on ({meta.get('base_model') or 'unknown'})"
            )
    tuner = build_tuner(method, meta["config"], layout)
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:
        raise SceditError(f"{weights}: cannot read weights ({e})") from None
    expected = tuner.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SceditError(
            f"{weights}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "the file is damaged or was edited"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise SceditError(
                f"{weights}: tensor {k} has shape {tuple(v.shape)}, config implies {tuple(expected[k].shape)}"
            )
    tuner.load_state_dict(state)
    tuner.to(device)
    tuner.file_meta = meta
    return tuner
