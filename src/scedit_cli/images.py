"""Any PIL image as the 8-bit RGB that every model and condition detector here expects.

`PIL.Image.convert("RGB")` is not enough: it clips 16- and 32-bit samples to
0..255 (a 16-bit grayscale PNG comes out almost white), it reads float images
as 0..255 too (an `F` image in 0..1 comes out black), and it drops alpha,
which exposes whatever colour the transparent pixels happen to store. Here:

- 16-bit samples (`I;16`, `I;16L`, `I;16B`, `I;16N`, and `I`, the mode Pillow
  gives 16-bit PNG and TIFF greyscale) are scaled to 8 bits, round(v / 257);
  an `I` image with values outside 0..65535 is refused. (A colour-key
  transparency of a 16-bit image is not read.)
- `F` (32-bit float) is read as 0..1 intensity, scaled by 255; values outside
  0..1 or not finite are refused.
- Transparency (alpha in LA, La, PA, RGBA, RGBa, or a palette / colour-key
  `transparency` of P, L, RGB, 1) is composited onto white, as a viewer shows
  it on a white page: out = colour * a + 255 * (1 - a).
- 16-bit RGB(A) PNGs are decoded by Pillow to 8 bits per channel already.
- 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's own conversion to RGB.

Refusals are `ValueError`s; each caller adds the file it was reading.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
BACKGROUND = (255, 255, 255)  # what transparent pixels become


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")  # 2-D uint8: mode L


def _from_16bit(image: Image.Image) -> Image.Image:
    v = np.asarray(image).astype(np.int64)
    if v.size and (v.min() < 0 or v.max() > 65535):
        raise ValueError(f"{image.mode} image has values {v.min()}..{v.max()}, outside the 16-bit range 0..65535; "
                         "save it as an 8- or 16-bit image")
    return _gray((v + 128) // 257)  # round(v * 255 / 65535) == round(v / 257)


def _from_float(image: Image.Image) -> Image.Image:
    v = np.asarray(image, dtype=np.float64)
    if v.size and not (np.isfinite(v).all() and v.min() >= 0.0 and v.max() <= 1.0):
        finite = v[np.isfinite(v)]
        seen = f"{finite.min():g}..{finite.max():g}" if finite.size else "no finite values"
        raise ValueError(f"F (32-bit float) image has {seen}{' and NaN/inf' if finite.size != v.size else ''}, "
                         "not 0..1 intensities; save it as an 8- or 16-bit image")
    return _gray(np.floor(v * 255.0 + 0.5))


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_rgb8(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB (the same object if it already is); see the module docstring for each mode."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        return _from_16bit(image)
    if mode == "F":
        return _from_float(image)
    if _has_alpha(image):
        if mode in ("La", "RGBa"):  # premultiplied alpha: un-premultiply first
            image = image.convert("LA" if mode == "La" else "RGBA")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")


def to_gray8(image: Image.Image) -> Image.Image:
    """`image` as 8-bit greyscale (mode L), through `to_rgb8` for every mode but L itself."""
    if image.mode == "L" and "transparency" not in image.info:
        return image
    return to_rgb8(image).convert("L")


def resize_crop(image: Image.Image, size, center: bool = True, rng: np.random.Generator | None = None,
                resample=Image.BICUBIC) -> tuple[Image.Image, tuple[int, int], tuple[int, int]]:
    """Resize to cover `size` (an int for a square, or (height, width)), then crop to it: the centre,
    or with `center=False` a position drawn from `rng`. One transform for training data and sampling.
    Returns (image, (top, left), (resized width, resized height))."""
    th, tw = (size, size) if isinstance(size, int) else size
    w, h = image.size
    scale = max(th / h, tw / w)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    image = image.resize((nw, nh), resample=resample)
    if center:
        left, top = (nw - tw) // 2, (nh - th) // 2
    else:
        left, top = int(rng.integers(0, nw - tw + 1)), int(rng.integers(0, nh - th + 1))
    return image.crop((left, top, left + tw, top + th)), (top, left), (nw, nh)
