"""Outputs of a sampling run: PNGs with their settings embedded, `manifest.jsonl`, resume.

Every image carries its full record (prompt, seed, settings) twice: in the PNG
text chunks (`scedit` as JSON, `parameters` as a one-line summary) and as one
line of `manifest.jsonl`. A run resumes from the PNGs themselves: an image
whose embedded record has the same prompt, seed and settings fingerprint is
done and is not generated again; a file made with other settings is refused,
never silently overwritten. The manifest is rewritten atomically after every
batch, so an interrupted run leaves a manifest of exactly the finished images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from ..errors import SceditError
from ..fsutil import atomic_path, write_text_atomic

MANIFEST_NAME = "manifest.jsonl"
PNG_KEY = "scedit"


def fingerprint(settings: dict) -> str:
    """A stable short hash of the settings that determine an image (besides prompt and seed)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def summary_line(record: dict) -> str:
    """An A1111-style `parameters` text, readable in image viewers."""
    s = record.get("settings", {})
    parts = [record.get("prompt", "")]
    if record.get("negative_prompt"):
        parts.append(f"Negative prompt: {record['negative_prompt']}")
    parts.append(
        f"Steps: {s.get('steps')}, Sampler: {s.get('scheduler')}, CFG scale: {s.get('guidance_scale')}, "
        f"Seed: {record.get('seed')}, Size: {s.get('width')}x{s.get('height')}, Model: {s.get('model')}"
    )
    return "\n".join(parts)


def save_png(image: Image.Image, path: Path, record: dict) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", summary_line(record))
    info.add_text(PNG_KEY, json.dumps(record, sort_keys=True))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def read_png_record(path: Path) -> dict | None:
    """The record embedded in a PNG we wrote, or None if the file has none / cannot be read."""
    try:
        with Image.open(path) as im:
            raw = im.info.get(PNG_KEY)
    except (UnidentifiedImageError, OSError):
        return None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def is_done(path: Path, record: dict) -> bool:
    """True if `path` already holds this exact image; raises if it holds a different one."""
    if not path.exists():
        return False
    old = read_png_record(path)
    same = old is not None and all(
        old.get(k) == record.get(k) for k in ("fingerprint", "prompt", "negative_prompt", "seed", "weights")
    )
    if same:
        return True
    what = "a different image (other prompt, seed or settings)" if old is not None else "a file scedit did not write"
    raise SceditError(
        f"{path}: already holds {what}; choose a new --out folder, or pass --overwrite to regenerate"
    )


def write_manifest(folder: Path, records: list[dict]) -> Path:
    path = folder / MANIFEST_NAME
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return path
