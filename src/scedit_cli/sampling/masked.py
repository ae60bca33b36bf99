"""Inpainting and outpainting in `sample` / `compose` (paper Fig. 7, 10, 16).

An inpaint / outpaint CSC-Tuner reads 4 channels: the masked cut-out (hidden
pixels black) and its mask (1 = to generate). They are made here by the code
that makes the training data (`conditions.compute_condition_maps` for the
cut-out and mask, `conditions.tensor.condition_tensor` for the tensor), so a
tuner sees at sampling time exactly what it was trained on.

- `--control inpaint:IMAGE --mask MASK.png`: white (> 127) = repaint. The mask
  must have the image's size; both are brought to the output size the way
  training images are (cover, centre crop; the mask with nearest neighbour).
- `--mask auto[:SEED]`: the LaMa-style mask that `scedit prepare --condition
  inpaint --seed SEED` draws for an image of that file name (drawn at the
  image's own size from the generator of (SEED, file stem)); SEED defaults to 0,
  prepare's default.
- `--control outpaint:IMAGE --extend left=0.25,right=0.25`: margins as
  fractions of the image's width (left, right) or height (top, bottom), each
  rounded to a multiple of 8 px (at least 8). The image (its own size rounded
  to multiples of 8, or --width x --height) sits in a black canvas that size
  larger, and the output is the whole canvas.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..conditions import MASKED_CONDITIONS, compute_condition_maps, get_spec, record_rng
from ..errors import SceditError
from .controls import ControlSpec, LoadedControl, MaskSpec, fit_to, open_image

SIDES = ("left", "right", "top", "bottom")
MAX_EXTEND = 4.0  # a margin of 4 image widths: beyond that a typo (25 for 0.25) is likelier than intent
GRID = 8  # output sizes and outpainting margins are multiples of this many pixels


def parse_mask(text: str) -> MaskSpec:
    """`MASK.png`, `auto` or `auto:SEED`."""
    if text == "auto" or text.startswith("auto:"):
        seed_text = text.partition(":")[2] or "0"
        if not seed_text.isdigit():
            raise SceditError(f"--mask {text!r}: expected auto or auto:SEED with SEED an integer >= 0, e.g. auto:3")
        return MaskSpec(None, int(seed_text))
    if not text.strip():
        raise SceditError("--mask is empty: give a mask image (white = repaint) or auto")
    return MaskSpec(Path(text).expanduser())


def parse_extend(text: str) -> tuple[tuple[str, float], ...]:
    """`left=0.25,right=0.25` -> (("left", 0.25), ("right", 0.25)), in SIDES order."""
    form = f"SIDE=FRACTION[,SIDE=FRACTION...] with SIDE one of {', '.join(SIDES)}, e.g. left=0.25,right=0.25"
    sides: dict[str, float] = {}
    for part in text.split(","):
        side, eq, value = (x.strip() for x in part.partition("="))
        if not eq or side not in SIDES:
            raise SceditError(f"--extend {text!r}: expected {form}")
        if side in sides:
            raise SceditError(f"--extend {text!r}: {side} is given twice")
        try:
            f = float(value)
        except ValueError:
            raise SceditError(f"--extend {text!r}: {side}={value!r} is not a number; expected {form}") from None
        if not 0 < f <= MAX_EXTEND:
            raise SceditError(f"--extend {text!r}: {side}={value} must be > 0 and <= {MAX_EXTEND:g} "
                              "(a fraction of the image's width or height)")
        sides[side] = f
    return tuple((s, sides[s]) for s in SIDES if s in sides)


def with_mask_options(controls: Sequence[ControlSpec], mask: str | None, extend: str | None) -> list[ControlSpec]:
    """Give `--mask` to the inpaint controls and `--extend` to the outpaint ones; refuse them elsewhere."""
    names = {c.name for c in controls}
    if mask is not None and "inpaint" not in names:
        raise SceditError("--mask goes with --control inpaint:IMAGE, and no inpaint control was given")
    if extend is not None and "outpaint" not in names:
        raise SceditError("--extend goes with --control outpaint:IMAGE, and no outpaint control was given")
    mask_spec = None if mask is None else parse_mask(mask)
    sides = () if extend is None else parse_extend(extend)
    out = []
    for c in controls:
        if c.name == "inpaint":
            c = replace(c, mask=mask_spec)
        elif c.name == "outpaint":
            c = replace(c, extend=sides)
        out.append(c)
    return out


def check_masked(controls: Sequence[ControlSpec]) -> None:
    """Fail before the model loads on a masked control without its mask or margins, or a missing mask file."""
    for c in controls:
        where = f"--control {c.name}:{c.path}"
        if c.name not in MASKED_CONDITIONS:
            if c.mask is not None or c.extend:
                raise SceditError(f"{where}: --mask is for inpaint and --extend for outpaint controls only")
            continue
        if c.is_map:
            raise SceditError(f"--control-map {c.name}:{c.path}: {c.name} takes the image itself: "
                              f"use --control {c.name}:IMAGE, and the cut-out and mask are made from it")
        if c.name == "inpaint":
            if c.extend:
                raise SceditError(f"{where}: --extend is for outpaint; inpaint takes --mask")
            if c.mask is None:
                raise SceditError(f"{where} needs a mask: --mask MASK.png (white = repaint) or --mask auto")
            if c.mask.path is not None and not c.mask.path.is_file():
                raise SceditError(f"{c.mask.path}: mask image not found (--mask)")
        else:
            if c.mask is not None:
                raise SceditError(f"{where}: --mask is for inpaint; outpaint takes --extend")
            if not c.extend:
                raise SceditError(f"{where} needs margins: --extend left=0.25,right=0.25 (fractions of the image)")


# --- outpainting canvas ------------------------------------------------------------------------


@dataclass(frozen=True)
class Canvas:
    """Where the outpainting image sits: its size and the margins around it, in pixels."""

    image: tuple[int, int]  # (width, height)
    left: int
    right: int
    top: int
    bottom: int

    @property
    def size(self) -> tuple[int, int]:
        return self.image[0] + self.left + self.right, self.image[1] + self.top + self.bottom

    def fractions(self) -> dict[str, float]:
        """The margins as fractions of the canvas: the outpaint condition's settings (see `conditions`)."""
        w, h = self.size
        return {"left": self.left / w, "right": self.right / w, "top": self.top / h, "bottom": self.bottom / h}


def _grid(v: float) -> int:
    return max(GRID, GRID * round(v / GRID))


def canvas_for(spec: ControlSpec, area: tuple[int | None, int | None]) -> Canvas:
    """The canvas of an outpaint control; `area` (--width, --height) sizes the image if given."""
    width, height = area
    for name, v in (("width", width), ("height", height)):
        if v is not None and (v < GRID or v % GRID):
            raise SceditError(f"--{name} {v}: must be a positive multiple of {GRID}")
    if width is None or height is None:
        w0, h0 = open_image(spec.path).size
        width, height = width or _grid(w0), height or _grid(h0)
    sides = dict(spec.extend)

    def margin(side: str, length: int) -> int:
        return _grid(sides[side] * length) if side in sides else 0

    return Canvas((width, height), margin("left", width), margin("right", width),
                  margin("top", height), margin("bottom", height))


def output_size(controls: Sequence[ControlSpec], area: tuple[int | None, int | None]) -> tuple[int, int] | None:
    """The canvas size when there are outpaint controls (they must agree on it), else None."""
    sizes = {canvas_for(c, area).size for c in controls if c.name == "outpaint"}
    if len(sizes) > 1:
        raise SceditError(f"the outpaint images give different canvas sizes {sorted(sizes)}; give images of one "
                          "size, or set the image size with --width/--height")
    return sizes.pop() if sizes else None


# --- the condition ------------------------------------------------------------------------------


def _mask_at_image_size(spec: ControlSpec, rgb: Image.Image) -> Image.Image:
    assert spec.mask is not None
    if spec.mask.path is None:
        # prepare's record key is the file name without its extension (see prepare.inputs.safe_key)
        from ..prepare.inputs import safe_key

        rng = record_rng(spec.mask.seed, safe_key(spec.path.stem))
        return compute_condition_maps("inpaint", rgb, rng=rng)["inpaint_mask"]
    mask = open_image(spec.mask.path, "mask image").convert("L")
    if mask.size != rgb.size:
        raise SceditError(f"{spec.mask.path}: mask is {mask.size[0]}x{mask.size[1]} but the image {spec.path} is "
                          f"{rgb.size[0]}x{rgb.size[1]}; give a mask of the image's size (white = repaint)")
    return mask


def masked_maps(spec: ControlSpec, width: int, height: int, area=(None, None)) -> dict[str, Image.Image]:
    """The condition's maps at the output size ({name: cut-out, name_mask: mask}) and "input", the image
    as placed in the output (outpaint: on its black canvas)."""
    rgb = open_image(spec.path).convert("RGB")
    if spec.name == "inpaint":
        image = fit_to(rgb, width, height, Image.BICUBIC)
        mask = fit_to(_mask_at_image_size(spec, rgb), width, height, Image.NEAREST)
        maps = compute_condition_maps("inpaint", image, params={"mask": mask})
        return {**maps, "input": image}
    canvas = canvas_for(spec, area)
    if canvas.size != (width, height):
        raise SceditError(f"outpaint canvas {canvas.size} differs from the output size {(width, height)}; "
                          "leave --width/--height to size the image inside the canvas")
    image = Image.new("RGB", canvas.size)
    image.paste(fit_to(rgb, *canvas.image, Image.BICUBIC), (canvas.left, canvas.top))
    maps = compute_condition_maps("outpaint", image, params=canvas.fractions())
    return {**maps, "input": maps["outpaint"]}


def load_masked(spec: ControlSpec, width: int, height: int, channels: int, area=(None, None)) -> LoadedControl:
    """The 4-channel condition of an inpaint/outpaint control, with its input and mask for the grid."""
    maps = masked_maps(spec, width, height, area)
    columns = get_spec(spec.name).columns
    from ..conditions.tensor import condition_tensor  # torch: only once the model runs

    tensor = condition_tensor([maps[c] for c in columns]).unsqueeze(0).contiguous()
    if tensor.shape[1] != channels:
        raise SceditError(f"--control {spec.name}:{spec.path}: the {spec.name} condition has {tensor.shape[1]} "
                          f"channels (cut-out and mask) but its CSC-Tuner reads {channels}; use a tuner trained "
                          f"with condition {spec.name!r}")
    return LoadedControl(tensor, [maps["input"], maps[columns[1]]])
