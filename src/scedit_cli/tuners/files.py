"""The files of a tuner folder (the stable format the README's "Tuner files" section documents):
its weights, its config, its model card; and where a tuner folder may be written. No torch:
finding a tuner (`hub.py`) or checking where one goes needs these before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SceditError

WEIGHTS_NAME = "tuner.safetensors"
CONFIG_NAME = "tuner_config.json"
CARD_NAME = "README.md"
TUNER_METHODS = ("sc", "csc")  # the methods a tuner config may record (`registry.TUNER_TYPES` builds them)


def is_tuner_folder(path: Path) -> bool:
    return (path / WEIGHTS_NAME).is_file() or (path / CONFIG_NAME).is_file()


def check_tuner_destination(path: Path, overwrite: bool, option: str) -> None:
    """Refuse to write a tuner folder at `path` over a tuner unless `overwrite`, and over a file or a
    folder of other files always (`option` names where the path came from, e.g. '--out')."""
    if path.exists() and not path.is_dir():
        raise SceditError(f"{option} {path}: is a file; a tuner is saved as a folder, choose a new folder")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not is_tuner_folder(path):
        raise SceditError(f"{option} {path}: a folder of other files, not a tuner folder; choose a new folder")
    if not overwrite:
        raise SceditError(f"{option} {path}: already holds a tuner; pass --overwrite to replace it, "
                          "or choose another folder")


def read_tuner_meta(path: Path) -> tuple[dict, Path]:
    """A tuner's config (its folder's `tuner_config.json`, or the metadata of a lone `.safetensors`) and its
    weights file; refuses what is not a scedit tuner of a known method."""
    path = Path(path)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        cfg = path / CONFIG_NAME
        if not weights.is_file():
            raise SceditError(f"{path}: no {WEIGHTS_NAME} in this folder; is it a scedit tuner folder?")
        if cfg.is_file():
            try:
                return _known(json.loads(cfg.read_text()), cfg), weights
            except json.JSONDecodeError as e:
                raise SceditError(f"{cfg}: not valid JSON ({e.msg} at line {e.lineno}); re-save the tuner") from None
        path = weights
    if not path.is_file():
        raise SceditError(f"{path}: tuner file not found; pass a tuner folder or its {WEIGHTS_NAME}")
    try:
        raw = _safetensors_metadata(path).get("scedit")
    except Exception as e:  # safetensors raises several exception types
        raise SceditError(f"{path}: not a readable safetensors file ({e}); tuners are saved with `scedit train`") from None
    if raw is None:
        raise SceditError(
            f"{path}: safetensors file without scedit metadata; official SCEdit checkpoints must be converted "
            "first with `scedit convert`"
        )
    return _known(json.loads(raw), path), path


def _known(meta: dict, path: Path) -> dict:
    if meta.get("format") != "scedit-tuner":
        raise SceditError(f"{path}: not a scedit tuner config (missing format: scedit-tuner)")
    if meta.get("method") not in TUNER_METHODS:
        raise SceditError(f"{path}: unknown tuner method {meta.get('method')!r}; this scedit knows "
                          f"{', '.join(TUNER_METHODS)}")
    return meta


def is_tuner_file(path: str | Path) -> bool:
    """Whether `path` is a scedit tuner (a folder with tuner.safetensors, or a .safetensors with scedit
    metadata), as opposed to an official checkpoint that `scedit convert` reads."""
    path = Path(path)
    if path.is_dir():
        return (path / WEIGHTS_NAME).is_file()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return "scedit" in _safetensors_metadata(path)
    except Exception:  # not readable as safetensors: let the loader that handles it report why
        return False


def _safetensors_metadata(path: Path) -> dict:
    """The metadata of a safetensors file, from its header only ("np": no torch)."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return f.metadata() or {}
