"""`train()`: the one training loop, for every method.

The run itself is in `run.py` (build, loop, finish), one step in `step.py` (shared with
`scedit bench`), distribution through accelerate in `distributed.py`, checkpoints in
`checkpoint.py`. The step helpers stay importable from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SceditError
from ..recipes import Recipe, load_recipe
from .plan import DryRunPlan
from .step import (LossOptions, StepBatch, TrainingParts, compute_loss, forward_loss, make_noise_scheduler, min_snr_weights, optimizer_step,
                   prepare_training, step_seed, training_step)

# The step helpers (bench, tests and cache.py import them from here).
__all__ = ["LossOptions", "StepBatch", "TrainResult", "TrainingParts", "compute_loss", "forward_loss", "make_noise_scheduler", "min_snr_weights", "optimizer_step",
           "prepare_training", "step_seed", "train", "training_step"]

@dataclass
class TrainResult:
    output_dir: str
    method: str
    steps: int
    outputs: list[str] = field(default_factory=list)
    first_loss: float | None = None
    final_loss: float | None = None
    losses: list[list[float]] = field(default_factory=list)
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    loss_curve: str | None = None
    samples: list[str] = field(default_factory=list)
    resumed_from: str | None = None
    interrupted: bool = False
    seconds: float = 0.0
    # A dry run's `DryRunPlan`; a real run's placement facts (prepared module, distributed type).
    plan: DryRunPlan | dict = field(default_factory=dict)
    dry_run: bool = False
    is_main_process: bool = True
    cache: str | None = None

    def summary(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "losses"}
        if isinstance(self.plan, DryRunPlan):
            d["plan"] = self.plan.to_dict()
        d["loss_points"] = len(self.losses)
        return d


def train(recipe: str | Path | dict | Recipe, overrides: list[str] | dict | None = None, resume: str | None = None,
          dry_run: bool = False, overwrite: bool = False, base=None) -> TrainResult:
    """Train as the recipe says. `resume`: 'latest' or a checkpoint folder. `dry_run`: plan only.
    `overwrite`: start afresh in an output folder that holds another run (see `rundir.py`).
    `base`: an already loaded `BaseModel` or diffusers pipeline to train on instead of loading
    model.source (still the source named in the outputs). When `train()` returns (or raises), the
    autograd patches it applied to the U-Net and the method's modules are removed again."""
    from ..methods import build_method
    from .run import build_run, finish, start_run, train_steps

    if resume and overwrite:
        raise SceditError("--resume continues the run in train.output_dir, --overwrite replaces it: give one")
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    method = build_method(r.method_name, r.method)
    if dry_run:
        from .plan import dry_run_plan

        plan = dry_run_plan(r, method)
        return TrainResult(r.train.output_dir, r.method_name, r.train.max_steps, plan=plan, dry_run=True)
    t0 = time.perf_counter()
    run = start_run(r, method, TrainResult)
    try:
        build_run(run, resume, overwrite, base)
        result = finish(run, train_steps(run))
    finally:
        if run.parts is not None:
            run.parts.restore()
        if run.main:
            for tracker in run.acc.trackers:  # not end_training(): it also ends the process group
                tracker.finish()
    result.seconds = time.perf_counter() - t0
    return result
