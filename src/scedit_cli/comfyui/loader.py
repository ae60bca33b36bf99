"""Where the nodes find tuners, and loading them for a ComfyUI model.

Inside ComfyUI, tuners live in `models/scedit/` (registered with ComfyUI's `folder_paths`, so
`extra_model_paths.yaml` can add folders): scedit tuner folders (listed by their
`tuner.safetensors`), lone tuner `.safetensors`, and official scepter / ms-swift SCEdit checkpoints,
converted in memory on load with `scedit convert`'s code. Outside ComfyUI (no `folder_paths` to import),
a node's tuner input is a path.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..convert import PICKLE_SUFFIXES, is_control_checkpoint, read_state_dict, tuner_from_state
from ..errors import SceditError
from ..tuners import SkipLayout, SkipTuner
from ..tuners.hub import resolve_tuner_source
from ..tuners.files import is_tuner_file
from ..tuners.io import load_tuner

FOLDER = "scedit"
EXTENSIONS = {".safetensors", *PICKLE_SUFFIXES}
# The condition a converted CSC checkpoint is labelled with when its path names none.
UNNAMED_CONDITION = "control"


def folder_paths_module():
    """ComfyUI's `folder_paths`, or None outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths


def register_folder(folder_paths) -> None:
    """Add `models/scedit` to ComfyUI's model folders (keeping folders extra_model_paths.yaml gave)."""
    entry = folder_paths.folder_names_and_paths.get(FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[FOLDER] = (
            [os.path.join(folder_paths.models_dir, FOLDER)], set(EXTENSIONS))
    elif isinstance(entry[1], set):
        entry[1].update(EXTENSIONS)


def tuner_choices() -> list[str] | None:
    """The tuner names a node offers inside ComfyUI, or None outside it (a path is typed instead)."""
    fp = folder_paths_module()
    if fp is None:
        return None
    register_folder(fp)
    return fp.get_filename_list(FOLDER)


def resolve_name(name: str) -> Path:
    """A node's tuner input -> the file it means: a name from models/scedit/ inside ComfyUI, else a path or
    a Hub id (`user/repo[/sub/folder][@revision]`)."""
    if not name:
        raise SceditError("SCEdit: no tuner chosen; put tuner files or folders in ComfyUI's models/scedit/")
    fp = folder_paths_module()
    if fp is not None:
        register_folder(fp)
        full = fp.get_full_path(FOLDER, name)
        if full is None:
            raise SceditError(
                f"SCEdit: tuner {name!r} not found in {', '.join(fp.get_folder_paths(FOLDER))}; "
                "refresh ComfyUI after adding tuners to models/scedit/"
            )
        return Path(full)
    return resolve_tuner_source(name)


def load_for_model(source: str | Path, layout: SkipLayout, factor: int) -> SkipTuner:
    """A tuner file / folder or an official checkpoint as a tuner for a U-Net with skip layout `layout`
    whose latents are 1/`factor` of the image; a scedit tuner built for another layout is refused."""
    path = Path(source).expanduser()
    # A tuner folder is named by its weights file; its config beside it is the authoritative one.
    if path.name == "tuner.safetensors" and (path.parent / "tuner_config.json").is_file():
        path = path.parent
    if is_tuner_file(path):
        return load_tuner(path, model_layout=layout)
    state, src = read_state_dict(path)
    condition = _condition_in_name(src) if is_control_checkpoint(state) else None
    tuner, fmt = tuner_from_state(state, src, layout, factor, condition)
    tuner.file_meta = {"base_model": None, "source_format": fmt, "converted_from": str(src)}
    return tuner


def _condition_in_name(path: Path) -> str:
    from ..conditions import CONDITIONS

    text = str(path).lower()
    return next((name for name in CONDITIONS if name in text), UNNAMED_CONDITION)
