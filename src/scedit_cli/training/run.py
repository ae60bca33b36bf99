"""The training run, top to bottom: `build_run` (data, base, method, optimizer, cache, resume
state), `train_steps` (batch -> step -> log / checkpoint / validate), `finish` (save, curves).

Every random draw of a sample (VAE posterior sample, noise, timestep) comes from a generator
seeded by (seed, the sample's position in the data stream), and the data order is a function of
(seed, epoch): resuming from a checkpoint continues exactly as the uninterrupted run would have,
also with another number of processes, and the draws do not depend on gradient accumulation.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SceditError, worker_batches
from ..fsutil import check_output_location
from ..methods.config import as_recipe_keys
from ..precision import autocast_dtype
from .step import LossOptions, StepBatch, optimizer_step, prepare_training, step_seed


@dataclass
class Run:
    """Everything a run holds between build and finish (the loop's only state)."""

    r: Any
    method: Any
    acc: Any
    out: Path
    result: Any  # TrainResult
    base: Any = None
    data: Any = None
    parts: Any = None  # step.TrainingParts (its `restore` undoes the autograd patches)
    model: Any = None  # distributed.TrainableModel, as accelerate prepared it
    optimizer: Any = None
    lr_scheduler: Any = None
    ema: Any = None
    loader: Any = None
    sampler: Any = None
    prediction_type: str = "epsilon"
    trigger: str | None = None
    start: int = 0
    history: list = field(default_factory=list)
    skipped: int = 0  # by this process since the run (re)started
    skipped_before: int = 0  # by every process before the checkpoint this run resumed
    skipped_examples: list = field(default_factory=list)
    saved_steps: set = field(default_factory=set)  # an interrupt right after a checkpoint must not save it twice
    val_items: list | None = None

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def autocast(self):
        amp = autocast_dtype(self.r.train.mixed_precision)
        return torch.autocast(self.acc.device.type, dtype=amp) if amp else contextlib.nullcontext()


def build_run(run: Run, resume: str | None, overwrite: bool, base=None) -> None:
    """Fill `run`: every refusal (output folder, checkpoint, data) comes before the model load and
    before anything is written; then the base, the method, the optimizer, the cache and the resume
    state, and the trainable module, optimizer and schedule through `accelerator.prepare`."""
    from ..cache import attach_cache
    from ..data import load_training_data
    from ..loader import training_loader
    from ..models import BaseModel, load_base
    from ..tuners.card import caption_trigger
    from .checkpoint import apply_checkpoint, read_for_resume
    from .distributed import TrainableModel, is_sharded
    from ..architectures import arch_of
    from ..console import quiet_loaders
    from ..precision import resolve_frozen_dtype
    from .rundir import check_fresh_run, check_resume_recipe, clear_previous_run, recipe_defaults

    r, method, acc, out = run.r, run.method, run.acc, run.out
    device, seed = acc.device, r.train.seed
    quiet_loaders()
    ckpt = None
    if resume:
        ckpt = read_for_resume(out, resume, run.main)
        check_resume_recipe(ckpt.path, ckpt.recipe, r.to_dict(), recipe_defaults(r))
        if ckpt.sharded != is_sharded(acc):
            raise SceditError(f"{ckpt.path}: written {'with' if ckpt.sharded else 'without'} FSDP / DeepSpeed "
                              f"sharding, this launch runs {acc.distributed_type.value}; resume it with a launch "
                              "config of the same kind (accelerate launch --config_file)")
        # At max_steps exactly (the final save was interrupted), resuming writes the outputs.
        if int(ckpt.state["step"]) > r.train.max_steps:
            raise SceditError(f"{ckpt.path}: already at step {ckpt.state['step']} > train.max_steps "
                              f"{r.train.max_steps}; raise train.max_steps to train further")
    else:
        check_fresh_run(out, overwrite)
    data = load_training_data(r.data, method.conditions, seed)  # data errors first: no model load to wait for
    run.trigger = caption_trigger(data.first_captions())  # for the model card
    if base is None:
        base = load_base(r.model.source, dtype=None, config=r.model.single_file_config or None)
    elif not isinstance(base, BaseModel):
        base = BaseModel.from_pipeline(base, r.model.source)
    if r.model.arch and r.model.arch.replace("-base", "") != arch_of(base):
        raise SceditError(
            f"{r.path or 'recipe'}: model.arch = {r.model.arch!r} but {r.model.source} is a {arch_of(base)} model; "
            "fix model.arch or model.source"
        )
    run.base = base
    run.prediction_type = r.model.prediction_type or base.prediction_type
    from accelerate.utils import set_seed

    set_seed(seed)  # the trainable modules' initial weights (e.g. the tuners' down projections)
    with as_recipe_keys(r.path):  # settings checked against this U-Net (skip indices) name the recipe key
        method.setup(base)
    run.parts = parts = prepare_training(method, base, device, resolve_frozen_dtype(r, device), r.train)
    if r.train.ema_decay:
        from .ema import EMA

        run.ema = EMA(method.named_trainable_parameters(), r.train.ema_decay)
    # The cache: VAE posteriors and text embeddings computed once (see cache.py); said either way.
    data, run.result.cache = attach_cache(r.data.cache, r.data.cache_dir, data, base, device, build_here=run.main,
                                          barrier=acc.wait_for_everyone)
    if run.result.cache and run.main:
        from ..console import info

        info(run.result.cache)
    run.data = data
    if ckpt is not None:  # before prepare: every process loads the same whole weights, then they are placed
        state = apply_checkpoint(ckpt, method, parts.optimizer, parts.lr_scheduler, parts.scaler, device, run.ema)
        run.start = int(state["step"])
        run.history = [list(x) for x in state.get("history", [])]
        run.skipped_before = int(state.get("skipped", 0))
        run.skipped_examples = list(state.get("skipped_examples", []))
        run.result.resumed_from = str(ckpt.path)
    model = TrainableModel(method, parts.noise_scheduler, run.prediction_type, autocast_dtype(r.train.mixed_precision),
                           LossOptions.from_train(r.train), whole_modules=is_sharded(acc))
    run.model, run.optimizer, run.lr_scheduler = acc.prepare(model, parts.optimizer, parts.lr_scheduler)
    run.result.plan["prepared_module"] = type(run.model).__module__ + "." + type(run.model).__qualname__
    run.result.plan["distributed_type"] = str(acc.distributed_type.value)
    if ckpt is not None and ckpt.sharded:  # the sharded optimizer state, now that it is prepared
        from .checkpoint import SHARDED

        acc.load_state(str(ckpt.path / SHARDED))
    run.loader, run.sampler = training_loader(data, r.train, r.data.num_workers, acc.process_index,
                                              acc.num_processes, run.start)
    if run.main:
        if overwrite:
            clear_previous_run(out)
        out.mkdir(parents=True, exist_ok=True)
        if r.logging.tensorboard:
            acc.init_trackers("tensorboard", config=flat_config(r))


def train_steps(run: Run) -> int:
    """The loop: one optimizer step per iteration until train.max_steps or a stop request;
    returns the step reached."""
    from .logging import ProgressLog
    from ..signals import StopFlag

    r = run.r
    prog = ProgressLog(r.train.max_steps, run.start, r.logging.every, enabled=run.main)
    step, batches = run.start, worker_batches(run.loader)
    with StopFlag() as stop:
        try:
            while step < r.train.max_steps:
                mean_loss = one_step(run, batches, step)
                step += 1
                run.history.append([step, mean_loss])
                prog.update(step, mean_loss)
                if r.logging.tensorboard and step % r.logging.every == 0 and not math.isnan(mean_loss):
                    run.acc.log({"train/loss": mean_loss, "train/lr": run.lr_scheduler.get_last_lr()[0]}, step=step)
                if r.checkpoint.every and step % r.checkpoint.every == 0 and step < r.train.max_steps:
                    checkpoint(run, step)
                if r.validation.every and step % r.validation.every == 0 and run.main:
                    validate(run, step)
                if stop.requested:
                    run.acc.set_trigger()
                # A signal may reach one process only (a scheduler's SIGTERM to one node): every process asks
                # the others (accelerate's trigger, one reduced number) and all stop after the same step.
                if run.acc.check_trigger():
                    run.result.interrupted = True
                    break
        except (StopIteration, RuntimeError):
            if not stop.requested:
                raise
            run.result.interrupted = True  # a DataLoader worker died of the same Ctrl-C
    prog.close()
    return step


def one_step(run: Run, batches, step: int) -> float:
    """Accumulate the step's micro-batches and take one optimizer step; the step's mean loss
    over every process (nan when no sample of the step could be read)."""
    r, acc, method, scaler = run.r, run.acc, run.method, run.parts.scaler
    device, world, A = acc.device, acc.num_processes, r.train.gradient_accumulation_steps
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    # A micro-batch's loss weighs its share of the step's samples (r.train.batch_size, or a bucket's
    # short last batch); accelerate divides by A in backward and DDP averages over the processes.
    share = A * world / run.sampler.step_size(step)
    for _ in range(A):
        batch = next(batches)
        for reason in batch["skipped"]:
            run.skipped += 1
            if len(run.skipped_examples) < 20:
                run.skipped_examples.append(reason)
        # Every micro-batch enters accumulate (its count decides the sync step); an empty one still
        # runs forward and backward when processes must join the gradient sync.
        with acc.accumulate(run.model):
            if batch["size"] == 0:
                if world > 1:
                    acc.backward(run.model(None))
                continue
            # Every draw of a sample is seeded by its stream position: results do not depend on
            # accumulation, process count or resume point.
            g = [torch.Generator(device).manual_seed(step_seed(r.train.seed, p)) for p in batch["positions"]]
            loss = run.model(step_batch(method, run.base, batch, device, g), g)
            weighted = loss * (batch["size"] * share)
            acc.backward(scaler.scale(weighted) if scaler is not None else weighted)
        loss_sum += torch.tensor([float(loss.detach()) * batch["size"], batch["size"]],
                                 dtype=torch.float64, device=device)
    if world > 1:
        loss_sum = acc.reduce(loss_sum, reduction="sum")
    n = float(loss_sum[1])
    if n:
        optimizer_step(run.optimizer, list(run.model.parameters()), scaler, r.train.max_grad_norm,
                       clip_grad_norm=acc.clip_grad_norm_)
        if run.ema is not None:
            run.ema.update()
    else:
        run.optimizer.zero_grad(set_to_none=True)
    run.lr_scheduler.step()
    return float(loss_sum[0]) / n if n else float("nan")


def step_batch(method, base, batch: dict, device, g) -> StepBatch:
    """A loader batch in latent / embedding space: the VAE posterior (or its cached moments)
    sampled with the samples' own generators, the text embeddings, SDXL's time ids."""
    from ..models import text_embeddings, time_ids

    with torch.no_grad():
        vae = base.vae
        if "moments" in batch:  # cached: the posterior sample is drawn exactly as below, from the same seeds
            from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

            dist = DiagonalGaussianDistribution(batch["moments"].to(device=device, dtype=vae.dtype))
            ehs = batch["prompt_embeds"].to(device)
            pooled = batch["pooled"].to(device) if "pooled" in batch else None
        else:
            px = batch["pixel_values"].to(device=device, dtype=vae.dtype)
            dist = vae.encode(px).latent_dist
            ehs, pooled = text_embeddings(base, batch["captions"], device)
        latents = dist.sample(generator=g)
        if getattr(vae.config, "shift_factor", None):
            latents = latents - vae.config.shift_factor
        latents = (latents * vae.config.scaling_factor).float()
        added = None
        if base.is_sdxl:
            ids = time_ids(batch["original_sizes"], batch["crop_top_lefts"], batch["target_size"], device,
                           pooled.dtype)
            added = {"text_embeds": pooled, "time_ids": ids}
    conds = [c.to(device) for c in batch["conditions"]] if method.conditions else None
    return StepBatch(latents, ehs, added, conds)


def checkpoint(run: Run, step: int) -> None:
    """The main process writes the checkpoint of `step` (once); every process waits for it. Under
    FSDP / DeepSpeed every process first saves its optimizer shard (accelerate's `save_state`) and
    the weights are gathered whole for our own file."""
    from .checkpoint import save_checkpoint
    from .checkpoint_files import checkpoint_root
    from .distributed import gathered_weights, is_sharded, whole_weights

    r, acc = run.r, run.acc
    skipped = skipped_total(run)
    if step in run.saved_steps:
        return acc.wait_for_everyone()
    staging, weights = None, None
    if is_sharded(acc):
        staging = checkpoint_root(run.out) / f".step-{step:08d}.{acc.distributed_type.value.lower()}"
        if run.main:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)  # left by a run that died while saving
        acc.wait_for_everyone()
        acc.save_state(str(staging))
        weights = gathered_weights(acc, run.model)
        acc.wait_for_everyone()
    if run.main:
        state = {"history": run.history, "skipped": skipped, "skipped_examples": run.skipped_examples[:20],
                 "batch_size": r.train.batch_size, "recipe": r.to_dict(), "world_size": acc.num_processes}
        with whole_weights(run.method, weights) if weights is not None else contextlib.nullcontext():
            p = save_checkpoint(run.out, step, run.method, run.optimizer, run.lr_scheduler, run.parts.scaler, state,
                                r.checkpoint.keep_last, run.ema, sharded_state=staging)
        run.result.checkpoints.append(str(p))
    run.saved_steps.add(step)
    acc.wait_for_everyone()


def skipped_total(run: Run) -> int:
    """Unreadable samples skipped by every process so far (a collective: every process calls it)."""
    mine = torch.tensor([run.skipped], device=run.acc.device)
    if run.acc.num_processes > 1:
        mine = run.acc.reduce(mine, reduction="sum")
    return run.skipped_before + int(mine.item())


def validate(run: Run, step: int) -> None:
    """A sample grid (conditions above their images) under OUTPUT/samples."""
    from .logging import save_grid
    from .validation import sample_images

    r, method = run.r, run.method
    if run.val_items is None:
        run.val_items = run.data.validation_items(r.validation.num_images)
    prompts = (list(r.validation.prompts) or [it["caption"] for it in run.val_items])[: r.validation.num_images]
    conds = None
    if method.conditions:
        if not run.val_items:
            return
        items = [run.val_items[i % len(run.val_items)] for i in range(len(prompts))]
        conds = [torch.stack([it["conditions"][c] for it in items]) for c in range(len(method.conditions))]
    imgs = sample_images(method, run.base, prompts, conds, r.data.resolution, r.validation.steps,
                         r.validation.guidance_scale, r.validation.seed, run.acc.device, run.autocast)
    rows = []
    if conds:
        from PIL import Image

        for c in conds:
            rows.append([Image.fromarray((c[i][:3].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
                         for i in range(len(imgs))])
    rows.append(imgs)
    run.result.samples.append(str(save_grid(rows, run.out / "samples" / f"step-{step:08d}.png")))


def finish(run: Run, step: int):
    """The last checkpoint, the skip count over every process, the method's own output files
    (and the EMA's), the loss curve and the model cards; returns the TrainResult."""
    from .distributed import gathered_weights, is_sharded, whole_weights
    from .logging import save_loss_curve

    r, acc, method, result = run.r, run.acc, run.method, run.result
    checkpoint(run, step)
    result.steps, result.losses = step, run.history
    vals = [v for _, v in run.history if not math.isnan(v)]
    result.first_loss = vals[0] if vals else None
    result.final_loss = vals[-1] if vals else None
    result.skipped, result.skipped_examples = skipped_total(run), run.skipped_examples[:5]
    weights = None
    if is_sharded(acc) and not result.interrupted:
        weights = gathered_weights(acc, run.model)  # every process takes part
    if run.main:
        if not result.interrupted:
            extra = {"recipe": r.name, "steps": step, "prediction_type": run.prediction_type}
            with whole_weights(method, weights) if weights is not None else contextlib.nullcontext():
                result.outputs = [str(p) for p in method.save(run.out, base_source=r.model.source, extra=extra)]
            if run.ema is not None:  # beside the trained weights, same format
                with run.ema.swapped_in():
                    result.outputs += [str(p) for p in method.save(run.out / "ema", base_source=r.model.source,
                                                                   extra={**extra, "ema_decay": run.ema.decay})]
        if r.logging.loss_curve:
            curve = save_loss_curve(run.history, run.out / "loss.png", f"{r.name}: {method.name}")
            result.loss_curve = str(curve) if curve else None
        if result.outputs:
            from ..tuners.card import write_training_cards

            write_training_cards([Path(p) for p in result.outputs], r, step, result.final_loss, run.out, run.trigger)
    acc.wait_for_everyone()
    return result


def start_run(r, method, result_cls) -> Run:
    """The run's Accelerator and output folder (checked, not yet written)."""
    from .distributed import make_accelerator

    out = check_output_location(r.train.output_dir, f"{r.path or 'recipe'}: train.output_dir")
    acc = make_accelerator(r, out)
    return Run(r, method, acc, out, result_cls(str(out), method.name, r.train.max_steps,
                                               is_main_process=acc.is_main_process))


def flat_config(r) -> dict:
    flat = {}
    for sec, vals in r.to_dict().items():
        if isinstance(vals, dict):
            for k, v in vals.items():
                flat[f"{sec}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat
