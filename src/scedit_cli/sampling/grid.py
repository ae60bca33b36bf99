"""Contact sheets: many images in one PNG, for a quick look at a run."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from ..fsutil import atomic_path


def contact_sheet(images: list[Image.Image], cols: int | None = None, cell: int = 256, pad: int = 2,
                  background=(255, 255, 255), upscale: bool = False, resample=Image.BICUBIC) -> Image.Image:
    """Lay `images` out in a grid, `cols` wide (default: square-ish); each scaled down to fit `cell` px
    (with `upscale`, small ones scaled up too: e.g. 64-px toy images, `resample=Image.NEAREST`)."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    n = len(images)
    cols = max(1, min(cols or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / cols)
    w0, h0 = images[0].size
    s = cell / max(w0, h0) if upscale else min(1.0, cell / max(w0, h0))
    cw, ch = max(1, round(w0 * s)), max(1, round(h0 * s))
    sheet = Image.new("RGB", (cols * cw + (cols + 1) * pad, rows * ch + (rows + 1) * pad), background)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        if im.size != (cw, ch):
            im = im.resize((cw, ch), resample)
        sheet.paste(im.convert("RGB"), (pad + c * (cw + pad), pad + r * (ch + pad)))
    return sheet


def write_contact_sheet(items: list[Path | Image.Image], out: Path, cols: int | None = None, cell: int = 256,
                        background=(255, 255, 255), pad: int = 2, upscale: bool = False,
                        resample=Image.BICUBIC) -> Path:
    """`contact_sheet` of image files and/or PIL images, written atomically to `out`."""
    images = []
    for p in items:
        if isinstance(p, Image.Image):
            images.append(p.convert("RGB"))
            continue
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    sheet = contact_sheet(images, cols=cols, cell=cell, pad=pad, background=background, upscale=upscale,
                          resample=resample)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
