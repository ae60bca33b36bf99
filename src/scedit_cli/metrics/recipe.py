"""`scedit eval --params --memory --time RECIPE`: what training a recipe costs, measured the way
`scedit bench` measures the paper's tables (the same set-up and training step)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..bench.specs import BenchSettings, MethodSpec
from ..errors import SceditError
from ..methods.config import as_recipe_keys
from .memory import settled_heap


@dataclass
class RecipeMeasurement:
    """`measure_recipe`'s result; `to_dict()` is its JSON form (the measures not taken are left out)."""

    recipe: str
    method: str
    config: dict
    trainable_params: int
    base: str
    settings: dict | None = None  # the bench settings of a memory / time measurement
    machine: dict | None = None
    memory: dict | None = None
    timing: dict | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def measure_recipe(recipe: str | Path, s: BenchSettings, *, memory: bool = True, timing: bool = True,
                   overrides: list[str] | None = None) -> RecipeMeasurement:
    """Trainable parameters, and (when asked) peak training memory and step time of a training recipe.

    The base is the recipe's `model.source` when it is a local diffusers folder (real weights), else the
    published architecture `model.arch` with random weights (said in the result). Batch size,
    resolution and mixed precision come from the recipe unless `s` overrides them.
    """
    from ..architectures import meta_base
    from ..bench.runner import BaseFactory, machine_info, run_method
    from ..methods import build_method
    from ..recipes import load_recipe

    r = load_recipe(recipe, overrides)
    method_cfg = r.method.to_dict()
    src = Path(r.model.source).expanduser() if r.model.source else None
    arch = (r.model.arch or "").replace("-base", "") or None
    if src is not None and src.is_dir():
        s.model = str(src)
    elif arch is None:
        raise SceditError(f"{r.path or recipe}: model.source {r.model.source!r} is not a local folder, so "
                          "the benchmark needs model.arch (sd15, sd21 or sdxl) to build the U-Net with random weights")
    if not (memory or timing):
        built = meta_base(s.model, arch)
        if built is None:
            raise SceditError(f"{s.model}: not a complete diffusers pipeline folder (unet, scheduler, vae configs "
                              "and model_index.json); set model.arch to count on the published architecture")
        base, _ = built
        method = build_method(r.method_name, method_cfg)
        with torch.device("meta"), as_recipe_keys(r.path):
            method.setup(base)
        return RecipeMeasurement(str(r.path or recipe), r.method_name, method_cfg, method.num_trainable(),
                                 s.model or f"{arch} (meta device)")
    if s.precision == "auto":
        s.precision = r.train.mixed_precision
    if s.lean == "auto":
        s.lean = r.train.lean
    if s.prepack == "auto":
        s.prepack = r.train.prepack
    if s.batch is None:
        s.batch = max(1, r.train.batch_size // r.train.gradient_accumulation_steps)
    if s.resolution is None:
        s.resolution = r.data.resolution
    factory = BaseFactory(arch or "sd15", s)
    spec = MethodSpec(r.name, r.method_name, method_cfg)
    with settled_heap():
        res = run_method(spec, factory, s)
    return RecipeMeasurement(str(r.path or recipe), r.method_name, method_cfg, res.trainable_params,
                             factory.description, settings=asdict(s), machine=machine_info(s.device),
                             memory=res.memory if memory else None, timing=res.timing if timing else None)
