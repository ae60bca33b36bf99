"""Condition images for CSC-Tuners: `--control NAME:IMAGE[:SCALE]` and `--control-map ...`.

`--control canny:photo.jpg` computes the condition map from a raw image with
the same code `scedit prepare` uses (`scedit_cli.conditions.compute_condition`,
inference settings, e.g. canny 100/200); `--control-map canny:edges.png` takes
a ready-made map as it is. Either way the image is brought to the output size
the way training images are (resize the short side, centre crop) before the
map is computed, and the map becomes a (1, C, H, W) float tensor in [0, 1]
(torchvision's ToTensor convention, as the official code feeds its hints).
Inpaint and outpaint controls carry a mask (`--mask`) or margins (`--extend`)
and become a cut-out plus its mask: see `masked.py`. The user's files are only
read, never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import SceditError
from ..fsutil import file_sha256
from ..images import resize_crop, to_gray8, to_rgb8

if TYPE_CHECKING:  # torch loads with the base model, not with the options
    import torch


@dataclass(frozen=True)
class MaskSpec:
    """`--mask`: a mask file (white = repaint), or `path=None` for prepare's seeded LaMa-style mask."""

    path: Path | None = None
    seed: int = 0

    def describe(self) -> str:
        return f"auto:{self.seed}" if self.path is None else str(self.path)


@dataclass(frozen=True)
class ControlSpec:
    """One condition image: which condition, which file, its scale/weight, and whether it is a map already."""

    name: str
    path: Path
    scale: float = 1.0
    is_map: bool = False
    params: tuple = field(default=())
    mask: MaskSpec | None = None  # inpaint: which pixels to repaint
    extend: tuple[tuple[str, float], ...] = ()  # outpaint: (side, fraction of the image) margins

    def describe(self) -> dict:
        d = {"condition": self.name, "image": str(self.path), "scale": self.scale,
             "input": "map" if self.is_map else "image"}
        if self.mask is not None:
            d["mask"] = self.mask.describe()
        if self.extend:
            d["extend"] = dict(self.extend)
        return d

    def record(self) -> dict:
        """`describe()` plus digests of the files read: what decides the condition tensor."""
        rec = {**self.describe(), "digest": file_digest(self.path)}
        if self.mask is not None and self.mask.path is not None:
            rec["mask_digest"] = file_digest(self.mask.path)
        return rec


def parse_control(text: str, is_map: bool = False, option: str = "--control") -> ControlSpec:
    """Parse `NAME:PATH` or `NAME:PATH:SCALE`."""
    if ":" not in text:
        raise SceditError(f"{option} {text!r}: expected NAME:IMAGE or NAME:IMAGE:SCALE, e.g. canny:photo.jpg:0.8")
    name, rest = text.split(":", 1)
    scale = 1.0
    if ":" in rest:
        head, tail = rest.rsplit(":", 1)
        try:
            scale = float(tail)
            rest = head
        except ValueError:  # the colon belongs to the path, unless only the path before it is there
            if not Path(rest).expanduser().exists() and Path(head).expanduser().is_file():
                raise SceditError(f"{option} {text!r}: scale {tail!r} is not a number; give NAME:IMAGE:SCALE, "
                                  "e.g. canny:photo.jpg:0.8") from None
    name = name.strip()
    if not name or not rest:
        raise SceditError(f"{option} {text!r}: expected NAME:IMAGE or NAME:IMAGE:SCALE, e.g. canny:photo.jpg:0.8")
    if not np.isfinite(scale):
        raise SceditError(f"{option} {text!r}: scale must be a finite number, got {scale}")
    return ControlSpec(name, Path(rest).expanduser(), scale, is_map)


def known_condition_names() -> list[str]:
    from ..conditions import CONDITIONS

    return list(CONDITIONS)


def open_image(path: Path, what: str = "control image") -> Image.Image:
    """The image at `path` as 8-bit RGB (`images.to_rgb8`)."""
    if not path.is_file():
        raise SceditError(f"{path}: {what} not found")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb8(im).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _unreadable(path, what, e) from None


def check_image_header(path: Path, what: str = "control image") -> None:
    """Refuse a file PIL does not take for an image, from its header alone (what `open_image` reads later)."""
    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _unreadable(path, what, e) from None


def _unreadable(path: Path, what: str, e: Exception) -> SceditError:
    return SceditError(f"{path}: cannot read {what} ({e}); give a PNG or JPEG file")


def fit_to(image: Image.Image, width: int, height: int, resample=Image.BICUBIC) -> Image.Image:
    """Resize so the image covers (width, height), then centre-crop to it (training's transform)."""
    if image.size == (width, height):
        return image
    return resize_crop(image, (height, width), resample=resample)[0]


def load_control_map(spec: ControlSpec, width: int, height: int, weights: str | Path | None = None) -> Image.Image:
    """The condition map for `spec` at the output size (RGB)."""
    return control_map(spec.name, open_image(spec.path), width, height, spec.is_map, weights, dict(spec.params))


def control_map(name: str, image: Image.Image, width: int, height: int, is_map: bool = False,
                weights: str | Path | None = None, params: dict | None = None) -> Image.Image:
    """Condition `name`'s map at (width, height) from a raw image (computed with the `prepare` code) or,
    with `is_map`, from a ready-made map (only resized)."""
    if is_map:
        return fit_to(to_rgb8(image), width, height, Image.BILINEAR)
    from ..conditions import compute_condition

    raw = fit_to(to_rgb8(image), width, height, Image.BICUBIC)
    cond = compute_condition(name, raw, weights=weights, params=params or None)
    return cond.convert("RGB")


def map_to_tensor(image: Image.Image, channels: int = 3) -> torch.Tensor:
    """(1, C, H, W) float32 in [0, 1], as training feeds a one-map condition (see `conditions.tensor`)."""
    from ..conditions.tensor import image_tensor

    if channels not in (1, 3):
        raise SceditError(
            f"this CSC-Tuner reads {channels}-channel conditions (a cut-out plus its mask, as inpaint/outpaint "
            "tuners do): give the image with --control inpaint:IMAGE --mask MASK.png or --control outpaint:IMAGE "
            "--extend left=0.25"
        )
    return image_tensor(to_rgb8(image) if channels == 3 else to_gray8(image)).unsqueeze(0).contiguous()


@dataclass
class LoadedControl:
    """A control ready for the tuner: its (1, C, H, W) tensor, and for inpaint/outpaint the
    input and mask shown beside the result in the contact sheet."""

    tensor: torch.Tensor
    panels: list[Image.Image] = field(default_factory=list)


def file_digest(path: Path) -> str:
    """A file's short content digest, as run manifests record inputs."""
    return file_sha256(path)[:16]
