"""Prompts for `scedit sample`: one prompt, or a prompts file (txt or jsonl).

- `.txt`: one prompt a line; blank lines are skipped.
- `.jsonl`: one JSON object a line with a `prompt` (or `caption` / `text`)
  string, and optionally `negative_prompt` (string) and `seed` (int, or a list
  of ints) that override the command's values for that line, and the line's
  own condition images: `control_map` (ready-made maps) and `control` (images
  the condition's annotator runs on), each an object `{"canny": "maps/07.png"}`
  with paths relative to the prompts file. A line's image for a condition
  replaces the command's `--control` / `--control-map` for that condition; a
  line may name conditions no loaded tuner reads (one file serves several
  tuners). Lines with different maps still share batches. Blank lines are
  skipped.

Every problem names the file and line and says what would fix it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SceditError
from .controls import ControlSpec

PROMPT_KEYS = ("prompt", "caption", "text")


@dataclass(frozen=True)
class PromptSpec:
    """One prompt; `index` is its position (0-based) among the prompts, used in file names."""

    index: int
    prompt: str
    negative_prompt: str | None = None
    seeds: tuple[int, ...] | None = None
    controls: tuple[ControlSpec, ...] = ()  # this prompt's own condition images, one per condition


CONTROL_KEYS = {"control_map": True, "control": False}  # key -> is a ready-made map


def _parse_seeds(value, where: str) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise SceditError(f"{where}: `seed` must be a non-negative integer or a list of them, got {value!r}")
    return tuple(values)


def read_prompts(path: str | Path) -> list[PromptSpec]:
    """Read a `.txt` or `.jsonl` prompts file."""
    path = Path(path)
    if not path.is_file():
        raise SceditError(f"{path}: prompts file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SceditError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise SceditError(f"{path}: cannot read prompts file ({e.strerror})") from None
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise SceditError(f"{path}: prompts file must end in .txt (one prompt a line) or .jsonl, not {suffix or 'no suffix'!r}")
    specs: list[PromptSpec] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if suffix == ".txt":
            specs.append(PromptSpec(len(specs), line.strip()))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SceditError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise SceditError(f"{where}: each line must be a JSON object like {{\"prompt\": \"...\"}}")
        key = next((k for k in PROMPT_KEYS if k in row), None)
        if key is None:
            raise SceditError(f"{where}: no `prompt` key (also accepted: caption, text)")
        prompt = row[key]
        if not isinstance(prompt, str) or not prompt.strip():
            raise SceditError(f"{where}: `{key}` must be a non-empty string, got {prompt!r}")
        neg = row.get("negative_prompt")
        if neg is not None and not isinstance(neg, str):
            raise SceditError(f"{where}: `negative_prompt` must be a string, got {neg!r}")
        seeds = _parse_seeds(row["seed"], where) if "seed" in row else None
        specs.append(PromptSpec(len(specs), prompt.strip(), neg, seeds, _parse_controls(row, path.parent, where)))
    if not specs:
        raise SceditError(f"{path}: prompts file holds no prompts (it is empty or only blank lines)")
    return specs


def _parse_controls(row: dict, folder: Path, where: str) -> tuple[ControlSpec, ...]:
    specs: dict[str, ControlSpec] = {}
    for key, is_map in CONTROL_KEYS.items():
        given = row.get(key, {})
        if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
            raise SceditError(f"{where}: `{key}` must be an object of condition name to image path, like "
                              f"{{\"canny\": \"maps/00.png\"}}; got {given!r}")
        for name, rel in given.items():
            if name in specs:
                raise SceditError(f"{where}: condition {name!r} is given twice (`control` and `control_map`); keep one")
            file = (folder / Path(rel).expanduser()).resolve()
            if not file.is_file():
                raise SceditError(f"{where}: {key} {name!r}: {file} not found (paths are relative to the prompts file)")
            specs[name] = ControlSpec(name, file, 1.0, is_map)
    return tuple(specs.values())


def prompt_list(prompt: str | None, prompts_file: str | Path | None) -> list[PromptSpec]:
    """Exactly one of `prompt` and `prompts_file`."""
    if (prompt is None) == (prompts_file is None):
        raise SceditError("give exactly one of --prompt and --prompts (a .txt or .jsonl file)")
    if prompt is not None:
        if not prompt.strip():
            raise SceditError("--prompt is empty; give a text prompt")
        return [PromptSpec(0, prompt.strip())]
    return read_prompts(prompts_file)
