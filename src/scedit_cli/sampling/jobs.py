"""What a `sample` / `compose` run is made of: its settings, its jobs (one image each), its result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SceditError
from .prompts import PromptSpec

if TYPE_CHECKING:
    from ..models import BaseModel


@dataclass
class SampleSettings:
    """Everything besides prompts, tuners and controls that determines the images."""

    steps: int = 50
    scheduler: str = "ddim"
    guidance_scale: float = 7.5
    width: int | None = None
    height: int | None = None
    negative_prompt: str | None = None
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 1
    tuner_scale: float = 1.0
    control_scale: float = 1.0
    grid_max: int = 64
    overwrite: bool = False
    annotator_weights: str | None = None

    def validate(self) -> None:
        if self.steps < 1:
            raise SceditError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise SceditError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.guidance_scale < 0:
            raise SceditError(f"--guidance-scale must be >= 0, got {self.guidance_scale}")
        if not self.seeds:
            raise SceditError("give at least one --seed")
        if any(s < 0 for s in self.seeds):
            raise SceditError(f"seeds must be >= 0, got {list(self.seeds)}")
        if self.grid_max < 0:
            raise SceditError(f"--grid-max must be >= 0, got {self.grid_max}")
        for name in ("width", "height"):  # given ones now; the base's default size is checked in `image_size`
            check_image_side(name, getattr(self, name))


@dataclass
class Job:
    index: int
    prompt: str
    negative_prompt: str | None
    seed: int
    weights: tuple[float, ...]
    # per attached tuner: index into the run's control list (None for SC-Tuners)
    controls: tuple[int | None, ...]
    variant: int | None = None
    filename: str = ""


@dataclass
class SampleResult:
    out: Path
    images: list[Path]
    generated: int
    skipped: int
    manifest: Path
    grid: Path | None
    seconds: float
    seconds_per_image: float | None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "images": [str(p) for p in self.images],
            "generated": self.generated,
            "skipped": self.skipped,
            "manifest": str(self.manifest),
            "grid": str(self.grid) if self.grid else None,
            "seconds": round(self.seconds, 3),
            "seconds_per_image": None if self.seconds_per_image is None else round(self.seconds_per_image, 4),
            **self.extra,
        }


def check_image_side(name: str, value: int | None) -> None:
    if value is not None and (value < 8 or value % 8):
        raise SceditError(f"--{name} {value}: must be a positive multiple of 8")


def image_size(base: BaseModel, settings: SampleSettings) -> tuple[int, int]:
    default = base.unet.config.sample_size * base.vae_scale_factor
    width = settings.width or default
    height = settings.height or default
    for name, v in (("width", width), ("height", height)):
        check_image_side(name, v)
    return width, height



def prompt_jobs(prompts: Sequence[PromptSpec | str], settings: SampleSettings):
    for p in prompts:
        spec = p if isinstance(p, PromptSpec) else None
        if spec is None:
            raise SceditError("prompts must be PromptSpec objects (see sampling.prompts.prompt_list)")
        seeds = spec.seeds or settings.seeds
        neg = spec.negative_prompt if spec.negative_prompt is not None else settings.negative_prompt
        for seed in seeds:
            yield spec, neg, seed


def as_prompts(prompts) -> list[PromptSpec]:
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        out.append(p if isinstance(p, PromptSpec) else PromptSpec(i, str(p)))
    if not out:
        raise SceditError("no prompts given")
    return out
