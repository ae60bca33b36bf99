"""The quickstart's constants, settings and small shared helpers."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SceditError

STYLES = ("half", "outline", "striped")
CONDITIONS = ("canny", "color")
STAGES = ("data", "train", "control", "report")
MARKER = ".scedit-quickstart"
OWNED = ("data", "runs", "samples", "eval", "grids", "report.md", "report.json")
COLOR_RATIO = 4  # 32 px / 4 = 8x8 colour cells, as 512 px / 64 on Stable Diffusion
CONTROL_JITTER = 3  # shapes move up to 3 px off the named position in the control set
# Control captions leave the position out: only the condition map says where the shape is.
CONTROL_CAPTION_POSITIONS = False
N_TRAIN = 256


def recipe_path(name: str) -> Path:
    """A quickstart recipe shipped inside the package (`style`, `canny`, `color`)."""
    from importlib.resources import files

    return Path(str(files("scedit_cli") / "assets" / "quickstart" / f"{name}.toml"))


@dataclass
class QuickstartSettings:
    """output: the folder everything goes to; steps_scale multiplies every recipe's max_steps."""

    output: Path = Path("scedit-quickstart")
    steps_scale: float = 1.0
    seed: int = 0
    style: str = "half"
    n_eval: int = 16
    n_train: int = N_TRAIN  # images in each training set (fewer only for quick checks of the whole command)
    sample_steps: int = 25
    guidance_scale: float = 4.0
    threads: int | None = None

    def validate(self) -> None:
        if not (self.steps_scale > 0) or not np.isfinite(self.steps_scale):
            raise SceditError(f"--steps-scale must be a number > 0, got {self.steps_scale}")
        if self.seed < 0:
            raise SceditError(f"--seed must be >= 0, got {self.seed}")
        if self.style not in STYLES:
            raise SceditError(f"--style {self.style!r}: choose one of {', '.join(STYLES)} (styles the base never saw)")
        if self.n_eval < 1:
            raise SceditError(f"--n-eval must be >= 1, got {self.n_eval}")
        if self.n_train < 1:
            raise SceditError(f"n_train must be >= 1, got {self.n_train}")
        if self.sample_steps < 1:
            raise SceditError(f"--sample-steps must be >= 1, got {self.sample_steps}")
        if self.threads is not None and self.threads < 1:
            raise SceditError(f"--threads must be >= 1, got {self.threads}")


@dataclass
class StageTime:
    wall_s: float
    cpu_s: float


@dataclass
class QuickstartResult:
    output: Path
    report_md: Path
    report_json: Path
    report: dict = field(default_factory=dict)


# --- helpers ---------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers), user + system."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_images(paths) -> list[np.ndarray]:
    return [load_rgb(Path(p)) for p in paths]


def mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def rel(p: Path | str | None, root: Path) -> str | None:
    if p is None:
        return None
    try:
        return str(Path(p).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)
