"""Reading one image cell of a dataset row: a path (relative to the dataset's folder), raw bytes,
or `datasets`' {"bytes", "path"} value. Anything unreadable is a `BadSample`, which the loader
skips and counts instead of crashing.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from .images import to_gray8, to_rgb8


class BadSample(Exception):
    """An unreadable image or an unusable row: the sample is skipped and counted."""


def open_image(value, base_dir: Path | None, mode: str | None = None) -> tuple[Image.Image, str]:
    """(image, description) from a dataset cell, as 8-bit `mode` ("RGB", "L") if given; raises BadSample."""
    desc = "<bytes>"
    try:
        if isinstance(value, dict):
            if value.get("bytes"):
                desc = value.get("path") or "<bytes>"
                value = value["bytes"]
            elif value.get("path"):
                value = value["path"]
            else:
                raise BadSample("empty image cell")
        if isinstance(value, Image.Image):
            desc, img = "<image>", value
        elif isinstance(value, (bytes, bytearray)):
            img = Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            p = Path(value).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            desc = str(p)
            if not p.is_file():
                raise BadSample(f"{p}: file not found")
            img = Image.open(p)
        elif value is None:
            raise BadSample("no image in this row")
        else:
            raise BadSample(f"unsupported image cell of type {type(value).__name__}")
        img.load()
        return (to_rgb8(img) if mode == "RGB" else to_gray8(img) if mode == "L" else img), desc
    except BadSample:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise BadSample(f"{desc}: unreadable image ({type(e).__name__}: {str(e)[:80]})") from None


def open_image_size(value, base_dir: Path | None) -> tuple[int, int]:
    """(height, width) of an image cell from its header, without decoding; raises BadSample."""
    if isinstance(value, dict) and not value.get("bytes") and value.get("path"):
        value = value["path"]
    try:
        if isinstance(value, str):
            p = Path(value).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            with Image.open(p) as im:
                return im.height, im.width
        if isinstance(value, dict) and value.get("bytes"):
            value = value["bytes"]
        if isinstance(value, (bytes, bytearray)):
            with Image.open(io.BytesIO(value)) as im:
                return im.height, im.width
    except Exception as e:
        raise BadSample(f"unreadable image ({type(e).__name__})") from None
    img, _ = open_image(value, base_dir)
    return img.height, img.width
