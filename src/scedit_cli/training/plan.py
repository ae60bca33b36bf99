"""`scedit train --dry-run`: build everything without training and report the plan.

The U-Net is built on the meta device (shapes only, no memory, no download)
from the model's own `unet/config.json` when it is here (a local folder or
the HF cache), otherwise from `model.arch`'s published configuration, and the
method is set up on it, so the trainable-parameter count is that of the real
run. The dataset is opened (not decoded) to count its rows.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

from ..errors import SceditError
from ..methods.config import as_recipe_keys
from ..models import BaseModel


def meta_base(r) -> tuple[BaseModel, str]:
    """A U-Net-only base on the meta device, and where its configuration came from."""
    from ..architectures import meta_base as build_meta_base

    built = build_meta_base(r.model.source, r.model.arch or None)
    if built is None:
        where = f"{r.path}: model.arch" if r.path else "model.arch"
        raise SceditError(
            f"{where}: {r.model.source} is not on this machine, so --dry-run needs model.arch "
            "(sd15, sd21, sd21-base or sdxl) to build the U-Net on the meta device"
        )
    return built


@dataclass
class DryRunPlan:
    """What `scedit train --dry-run` reports; `to_dict()` is its `--json` form."""

    recipe: str | None
    description: str
    method: str
    model: str
    model_built_from: str
    sdxl: bool
    prediction_type: str
    trainable_parameters: int
    trainable_parameters_m: float
    unet_parameters_m: float
    data: str
    dataset_size: int | None
    steps: int
    batch_size: int
    processes: int
    gradient_accumulation_steps: int
    per_device_batch: float
    learning_rate: float
    mixed_precision: str
    resolution: int
    output_dir: str
    checkpoint_every: int
    validation_every: int
    epochs: float | None = None  # with a readable dataset
    dataset_error: str | None = None  # why the dataset could not be opened
    dataset_streaming: bool | None = None  # data.streaming: no length before a pass

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("epochs", "dataset_error", "dataset_streaming"):  # keys present only when they apply
            if d[k] is None:
                del d[k]
        return d


def dry_run_plan(r, method) -> DryRunPlan:
    from ..data import load_training_data

    base, model_from = meta_base(r)
    with torch.device("meta"), as_recipe_keys(r.path):
        method.setup(base)
    trainable = method.num_trainable()
    total_unet = sum(p.numel() for p in method.unet.parameters())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    A = r.train.gradient_accumulation_steps
    plan = DryRunPlan(
        recipe=str(r.path) if r.path else None,
        description=r.description,
        method=method.describe(),
        model=r.model.source,
        model_built_from=model_from,
        sdxl=base.is_sdxl,
        prediction_type=r.model.prediction_type or base.prediction_type,
        trainable_parameters=trainable,
        trainable_parameters_m=round(trainable / 1e6, 2),
        unet_parameters_m=round(total_unet / 1e6, 2),
        data=r.data.source,
        dataset_size=None,
        steps=r.train.max_steps,
        batch_size=r.train.batch_size,
        processes=world,
        gradient_accumulation_steps=A,
        per_device_batch=r.train.batch_size / (world * A),
        learning_rate=r.train.learning_rate,
        mixed_precision=r.train.mixed_precision,
        resolution=r.data.resolution,
        output_dir=r.train.output_dir,
        checkpoint_every=r.checkpoint.every,
        validation_every=r.validation.every,
    )
    try:
        data = load_training_data(r.data, method.conditions, r.train.seed)
        streaming = getattr(data, "streaming", False)  # a stream's length is known only once read through
        plan.dataset_streaming = streaming
        if not streaming:
            plan.dataset_size = len(data)
            plan.epochs = round(r.train.max_steps * r.train.batch_size / len(data), 2)
    except SceditError as e:
        plan.dataset_error = str(e)
    return plan
