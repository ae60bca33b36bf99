"""A deterministic toy world of captioned images with exactly known ground truth.

One shape (circle, square or triangle) of one colour, at one of five positions,
on a plain background of another colour, e.g. "a red circle at the top left on
a black background". Every image is drawn from a `Scene`, so its ground truth
(shape, colour, position, size, mask) is known exactly and a generated image
can be scored analytically (see `scedit_cli.toy.score`).

Styles: `solid` (what the shipped base model is trained on), and three styles
the base never sees, for fine-tuning demos: `outline` (a 2-px ring of the
shape's colour, interior background-coloured), `striped` (horizontal stripes of
the shape's colour and the background, 2 px each) and `half` (only the upper
half of the shape painted: the rows above the shape's centre; the lower half is
background). The toy VAE decodes `half` almost exactly (pixel agreement 0.92
after a round trip) but not 2-px outlines or stripes (0.60 / ~0.6), so `half` is
the style a U-Net-side tuner can visibly learn on the toy base. Captions for a style fine-tune
carry the trigger word `<sce>` instead of the style's name (`caption(scene,
trigger="<sce>")`), as in the paper's few-shot style experiments.

Everything is rendered at a 32-px design grid without anti-aliasing (so masks
and colours are exact) and scaled by an integer factor with nearest-neighbour
for larger sizes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..fsutil import atomic_dir

GRID = 32  # the design grid every scene is drawn on

#: Foreground colours (RGB), far apart in RGB space so a nearest-colour
#: classifier reads them back without ambiguity.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 30),
    "cyan": (40, 210, 220),
    "purple": (150, 40, 200),
}
#: Background colours, disjoint from the foreground palette.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "gray": (125, 125, 125),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Position name -> nominal centre (x, y) on the 32-px grid.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (9.0, 9.0),
    "top right": (23.0, 9.0),
    "bottom left": (9.0, 23.0),
    "bottom right": (23.0, 23.0),
    "center": (16.0, 16.0),
}
#: Size name -> diameter (bounding-box side) on the 32-px grid.
SIZES: dict[str, int] = {"small": 10, "large": 14}
STYLES: tuple[str, ...] = ("solid", "outline", "striped", "half")
TRIGGER = "<sce>"
OUTLINE_WIDTH = 2
STRIPE_PERIOD = 4  # 2 rows of colour, 2 rows of background

#: Every word a caption can contain (the toy tokenizer's word list).
EXTRA_WORDS: tuple[str, ...] = (
    "a", "an", "at", "the", "on", "in", "of", "with", "and", "background", "style", "shape",
    "top", "bottom", "left", "right", "center", "solid", "outline", "outlined", "striped", "stripes",
    "small", "large", "image", "picture", TRIGGER,
)


def vocabulary() -> list[str]:
    """The sorted list of words captions are built from (includes `<sce>`)."""
    words = set(EXTRA_WORDS) | set(COLOURS) | set(BACKGROUNDS) | set(SHAPES) | set(SIZES)
    for p in POSITIONS:
        words.update(p.split())
    return sorted(words)


@dataclass(frozen=True)
class Scene:
    """The full ground truth of one image."""

    shape: str
    colour: str
    background: str
    position: str
    size: str = "large"
    dx: int = 0  # jitter of the centre, in grid pixels
    dy: int = 0
    style: str = "solid"

    @property
    def centre(self) -> tuple[float, float]:
        x, y = POSITIONS[self.position]
        return x + self.dx, y + self.dy

    @property
    def diameter(self) -> int:
        return SIZES[self.size]

    def with_style(self, style: str) -> "Scene":
        return dataclasses.replace(self, style=style)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ToyWorld:
    """Which factors scenes are drawn from. The default is what the base model is trained on."""

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    positions: tuple[str, ...] = tuple(POSITIONS)
    sizes: tuple[str, ...] = ("large",)
    jitter: int = 1  # the centre moves by up to this many grid pixels each way
    # Whether captions name the position. Without it only a condition map (canny,
    # colour) says where the shape is: what a control tuner must learn to read.
    caption_positions: bool = True

    def __post_init__(self) -> None:
        for name, values, allowed in (
            ("shapes", self.shapes, SHAPES),
            ("colours", self.colours, COLOURS),
            ("backgrounds", self.backgrounds, BACKGROUNDS),
            ("positions", self.positions, POSITIONS),
            ("sizes", self.sizes, SIZES),
        ):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"ToyWorld.{name}: {bad or 'empty'} not in {sorted(allowed)}")

    def sample_scene(self, rng: np.random.Generator, style: str = "solid") -> Scene:
        """Draw one scene; the same `rng` state always gives the same scene."""
        if style not in STYLES:
            raise ValueError(f"style {style!r} not in {STYLES}")
        j = self.jitter
        return Scene(
            shape=self.shapes[rng.integers(len(self.shapes))],
            colour=self.colours[rng.integers(len(self.colours))],
            background=self.backgrounds[rng.integers(len(self.backgrounds))],
            position=self.positions[rng.integers(len(self.positions))],
            size=self.sizes[rng.integers(len(self.sizes))],
            dx=int(rng.integers(-j, j + 1)) if j else 0,
            dy=int(rng.integers(-j, j + 1)) if j else 0,
            style=style,
        )

    def scenes(self, n: int, seed: int, style: str = "solid") -> list[Scene]:
        rng = np.random.default_rng(seed)
        return [self.sample_scene(rng, style) for _ in range(n)]

    def caption(self, scene: Scene, trigger: str | None = None) -> str:
        return caption(scene, with_size=len(self.sizes) > 1, trigger=trigger, with_position=self.caption_positions)


def sample_scene(rng: np.random.Generator, style: str = "solid", world: ToyWorld | None = None) -> Scene:
    """Draw one scene from `world` (default: the base model's world)."""
    return (world or ToyWorld()).sample_scene(rng, style)


def caption(scene: Scene, with_size: bool = False, trigger: str | None = None, style_words: bool = False,
            with_position: bool = True) -> str:
    """"a red circle at the top left on a black background".

    `trigger` (e.g. "<sce>") appends "in <sce> style"; `style_words` names the
    style instead ("in outline style") for non-solid scenes; `with_position=False`
    leaves the position out ("a red circle on a black background").
    """
    size = f"{scene.size} " if with_size else ""
    where = "in the center" if scene.position == "center" else f"at the {scene.position}"
    where = f" {where}" if with_position else ""
    text = f"a {size}{scene.colour} {scene.shape}{where} on a {scene.background} background"
    if trigger:
        text += f" in {trigger} style"
    elif style_words and scene.style != "solid":
        text += f" in {scene.style} style"
    return text


def shape_mask_grid(shape: str, cx: float, cy: float, d: int) -> np.ndarray:
    """Binary mask (GRID x GRID) of a filled shape with bounding-box side `d` centred at (cx, cy)."""
    img = Image.new("L", (GRID, GRID), 0)
    draw = ImageDraw.Draw(img)
    r = d / 2.0
    x0, y0, x1, y1 = cx - r, cy - r, cx + r - 1, cy + r - 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2.0, y0), (x1, y1), (x0, y1)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(img) > 127


def shape_mask(shape: str, cx: float, cy: float, d: int, size: int = GRID) -> np.ndarray:
    """Filled-shape mask at output resolution `size` (a multiple of 32)."""
    return _upscale(shape_mask_grid(shape, cx, cy, d), size)


def _upscale(a: np.ndarray, size: int) -> np.ndarray:
    if size == GRID:
        return a
    if size % GRID:
        raise ValueError(f"image size must be a multiple of {GRID}, got {size}")
    k = size // GRID
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=r) if r > 0 else mask


def scene_mask(scene: Scene, size: int = GRID) -> np.ndarray:
    """Ground-truth mask of the whole shape (filled, whatever the style)."""
    cx, cy = scene.centre
    return shape_mask(scene.shape, cx, cy, scene.diameter, size)


def paint_mask(scene: Scene, size: int = GRID) -> np.ndarray:
    """Mask of the pixels actually painted in the shape's colour (depends on style)."""
    full = scene_mask(scene, GRID)
    if scene.style == "solid":
        m = full
    elif scene.style == "outline":
        m = full & ~erode(full, OUTLINE_WIDTH)
    elif scene.style == "striped":
        rows = (np.arange(GRID) % STRIPE_PERIOD) < STRIPE_PERIOD // 2
        m = full & rows[:, None]
    elif scene.style == "half":
        m = full & half_rows(scene.centre[1])[:, None]
    else:
        raise ValueError(f"unknown style {scene.style!r}")
    return _upscale(m, size)


def half_rows(cy: float) -> np.ndarray:
    """Rows (bool, length GRID) of the `half` style's painted upper half for a shape centred at row `cy`."""
    return np.arange(GRID) < cy


def render(scene: Scene, size: int = GRID, style: str | None = None) -> Image.Image:
    """Draw `scene` as an RGB PIL image of `size` x `size` (a multiple of 32).

    `style` overrides `scene.style` when given.
    """
    if style is not None:
        scene = scene.with_style(style)
    arr = np.empty((size, size, 3), np.uint8)
    arr[:] = BACKGROUNDS[scene.background]
    arr[paint_mask(scene, size)] = COLOURS[scene.colour]
    return Image.fromarray(arr, "RGB")


def render_array(scene: Scene, size: int = GRID, style: str | None = None) -> np.ndarray:
    """Like `render`, as a uint8 H x W x 3 array."""
    return np.asarray(render(scene, size, style))


def canny(image: Image.Image | np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edge map (bool H x W) of an RGB image, thresholds as SCEdit's inference (100/200).

    `conditions.canny`'s operator on the grey image, not on the RGB one as `scedit prepare` runs it: on
    the toy's flat colours the two differ where neighbouring colours are about as bright, and the toy's
    condition maps (`make_dataset`) and the quickstart's edge F1 of generated images must use the same
    maps, on which the quickstart recipes are set.
    """
    import cv2

    from ..conditions.canny import canny_array

    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    gray = cv2.cvtColor(np.ascontiguousarray(arr[..., :3]), cv2.COLOR_RGB2GRAY)
    return canny_array(gray, low, high) > 0


def make_dataset(
    folder: str | os.PathLike,
    n: int,
    seed: int = 0,
    style: str = "solid",
    size: int = GRID,
    world: ToyWorld | None = None,
    trigger: str | None = None,
    conditions: Sequence[str] = ("canny",),
    masks: bool = True,
) -> Path:
    """Write `n` captioned images to `folder` (atomically: the folder appears complete or not at all).

    Layout: `images/00000.png`, optionally `masks/00000.png` (ground-truth
    shape mask) and `canny/00000.png` (edges of the ground-truth image), and
    `metadata.jsonl` with one object per image: `image`, `text`, the scene's
    fields (shape, colour, background, position, size, dx, dy, style), `cx`,
    `cy`, `diameter`, `image_size`, and `mask` / `canny` paths.
    The same (n, seed, style, size, world, trigger) always gives byte-identical files.
    """
    world = world or ToyWorld()
    bad = [c for c in conditions if c != "canny"]
    if bad:
        raise ValueError(f"unknown condition(s) {bad}; the toy world writes 'canny'")
    folder = Path(folder)
    scenes = world.scenes(n, seed, style)
    width = max(5, len(str(max(n - 1, 0))))
    with atomic_dir(folder) as tmp:
        (tmp / "images").mkdir()
        if masks:
            (tmp / "masks").mkdir()
        for c in conditions:
            (tmp / c).mkdir()
        lines = []
        for i, sc in enumerate(scenes):
            name = f"{i:0{width}d}.png"
            img = render(sc, size)
            img.save(tmp / "images" / name)
            rec = {"image": f"images/{name}", "text": world.caption(sc, trigger=trigger)}
            rec.update(sc.to_dict())
            cx, cy = sc.centre
            rec.update(cx=cx, cy=cy, diameter=sc.diameter, image_size=size)
            if masks:
                Image.fromarray(scene_mask(sc, size).astype(np.uint8) * 255, "L").save(tmp / "masks" / name)
                rec["mask"] = f"masks/{name}"
            if "canny" in conditions:
                Image.fromarray(canny(img).astype(np.uint8) * 255, "L").save(tmp / "canny" / name)
                rec["canny"] = f"canny/{name}"
            lines.append(json.dumps(rec))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def read_metadata(folder: str | os.PathLike) -> list[dict]:
    """The records of a dataset written by `make_dataset`."""
    path = Path(folder) / "metadata.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def all_scenes(world: ToyWorld | None = None, style: str = "solid") -> Iterable[Scene]:
    """Every un-jittered scene of `world`, in a fixed order."""
    world = world or ToyWorld()
    for shape in world.shapes:
        for colour in world.colours:
            for bg in world.backgrounds:
                for pos in world.positions:
                    for sz in world.sizes:
                        yield Scene(shape, colour, bg, pos, sz, style=style)
