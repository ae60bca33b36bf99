"""The files of a tuner folder (the stable format the README's "Tuner files" section documents):
its weights, its config, its model card; and where a tuner folder may be written. No torch:
finding a tuner (`hub.py`) or checking where one goes needs these before anything loads."""

from __future__ import annotations

from pathlib import Path

from ..errors import SceditError

WEIGHTS_NAME = "tuner.safetensors"
CONFIG_NAME = "tuner_config.json"
CARD_NAME = "README.md"


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
