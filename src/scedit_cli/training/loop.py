"""The one training loop, for every method.

Noise, timesteps, the target by prediction type (epsilon / v_prediction /
sample), the MSE loss, accelerate (mixed precision, several processes),
gradient accumulation, checkpoints, logging and validation are written here
once; a `Method` only supplies its trainable modules and `predict`.

Every random draw for a sample (VAE posterior sample, noise, timestep) comes
from a generator seeded by (seed, the sample's position in the data stream),
and the data order is a function of (seed, epoch): resuming from a checkpoint
continues exactly as the uninterrupted run would have, and the draws do not
depend on gradient accumulation or the number of processes.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SceditError
from ..fsutil import check_output_location
from ..architectures import arch_of
from ..models import BaseModel, text_embeddings, time_ids
from ..precision import autocast_dtype, cast_frozen, resolve_frozen_dtype, vae_dtype
from ..recipes import Recipe, load_recipe

# --------------------------------------------------------------------------
# one step, reusable on random latents (scedit bench times steps with these)


@dataclass
class StepBatch:
    """What one training step consumes, already in latent / embedding space."""

    latents: torch.Tensor
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict | None = None
    conditions: list[torch.Tensor] | None = None


@dataclass
class LossOptions:
    """Training-loss options (a recipe's [train] keys; all off by default, as in the paper).

    snr_gamma: Min-SNR-gamma weighting (Hang et al. 2023): each sample's MSE times
    min(SNR, gamma) / SNR for epsilon targets, / (SNR + 1) for v-prediction, x1 for sample.
    noise_offset: add offset * N(0, 1) per (sample, channel) to the noise (darker/brighter images).
    input_perturbation: noise the latents with noise + p * N(0, 1) while the target stays the noise.
    The extra draws come after a sample's noise and timestep, from the same seeded generator.
    """

    snr_gamma: float = 0.0
    noise_offset: float = 0.0
    input_perturbation: float = 0.0

    @classmethod
    def from_train(cls, cfg) -> "LossOptions | None":
        opts = cls(cfg.snr_gamma, cfg.noise_offset, cfg.input_perturbation)
        return opts if (opts.snr_gamma or opts.noise_offset or opts.input_perturbation) else None


def make_noise_scheduler(base: BaseModel):
    """DDPM training scheduler from the base's scheduler config (SD's schedule when there is none)."""
    from diffusers import DDPMScheduler

    if base.scheduler is not None:
        return DDPMScheduler.from_config(base.scheduler.config)
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, prediction_type=base.prediction_type)


def step_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from (seed, *keys): independent streams, no state to save."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) | (int(state[1]) << 32)) & ((1 << 63) - 1)


def compute_loss(method, noise_scheduler, prediction_type: str, batch: StepBatch,
                 generator: torch.Generator | None = None, loss_options=None) -> torch.Tensor:
    """Noise the latents at random timesteps and return the MSE to the prediction type's target."""
    latents = batch.latents
    n_train = noise_scheduler.config.num_train_timesteps
    dev = latents.device
    opts = loss_options or LossOptions()
    gens = list(generator) if isinstance(generator, (list, tuple)) else None
    if gens is not None:  # one generator per sample: draws independent of batching
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g, device=dev, dtype=latents.dtype)
                             for g in gens])
        t = torch.cat([torch.randint(0, n_train, (1,), generator=g, device=dev) for g in gens]).long()
    else:
        noise = torch.randn(latents.shape, generator=generator, device=dev, dtype=latents.dtype)
        t = torch.randint(0, n_train, (latents.shape[0],), generator=generator, device=dev).long()

    def draw(shape):  # per-sample shape
        if gens is not None:
            return torch.stack([torch.randn(shape, generator=g, device=dev, dtype=latents.dtype) for g in gens])
        return torch.randn((latents.shape[0], *shape), generator=generator, device=dev, dtype=latents.dtype)

    if opts.noise_offset:
        noise = noise + opts.noise_offset * draw((latents.shape[1], *([1] * (latents.dim() - 2))))
    noisy_input = noise
    if opts.input_perturbation:
        noisy_input = noise + opts.input_perturbation * draw(latents.shape[1:])
    noisy = noise_scheduler.add_noise(latents, noisy_input, t)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    elif prediction_type == "sample":
        target = latents
    else:
        raise SceditError(f"unknown prediction type {prediction_type!r}; use epsilon, v_prediction or sample")
    pred = method.predict(noisy, t, batch.encoder_hidden_states, batch.added_cond_kwargs, batch.conditions)
    if not opts.snr_gamma:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    snr = min_snr_weights(noise_scheduler, t, opts.snr_gamma, prediction_type)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.dim())))
    return (per_sample * snr).mean()


def min_snr_weights(noise_scheduler, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights for timesteps `t`."""
    ac = noise_scheduler.alphas_cumprod.to(device=t.device, dtype=torch.float64)[t]
    snr = ac / (1.0 - ac)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        w = clipped / snr
    elif prediction_type == "v_prediction":
        w = clipped / (snr + 1.0)
    else:
        w = clipped
    return w.float()


def optimizer_step(optimizer: torch.optim.Optimizer, params, scaler=None, max_grad_norm: float = 0.0,
                   lr_scheduler=None) -> None:
    """Unscale (fp16), clip to `max_grad_norm` (0: no clipping), step, zero the gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def training_step(method, base: BaseModel, batch: StepBatch, optimizer: torch.optim.Optimizer | None = None,
                  noise_scheduler=None, generator: torch.Generator | None = None,
                  autocast_dtype: torch.dtype | None = None, scaler=None, *, max_grad_norm: float = 0.0,
                  accumulate: bool = False, loss_scale: float = 1.0, params=None, lr_scheduler=None,
                  prediction_type: str | None = None, loss_options=None) -> float:
    """One forward + backward on ready latents/embeddings; unless `accumulate`, also the optimizer
    step (unscale, clip to `max_grad_norm`, step, zero grads) when `optimizer` is given.

    `loss_scale` multiplies the loss before backward (the trainer's share of the batch);
    the returned value is the unscaled loss. `scedit train` calls this for every
    micro-step and `scedit bench` for every timed step: one path for both.
    For timing methods on real-size random-weight U-Nets: build the base with
    `BaseModel.from_unet(unet)`, `method.setup(base)`, `prepare_training(...)`, then call this.
    """
    noise_scheduler = noise_scheduler or make_noise_scheduler(base)
    device = batch.latents.device
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        loss = compute_loss(method, noise_scheduler, prediction_type or base.prediction_type, batch, generator,
                            loss_options)
    scaled = loss * loss_scale if loss_scale != 1.0 else loss
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    if optimizer is not None and not accumulate:
        if params is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer_step(optimizer, params, scaler, max_grad_norm, lr_scheduler)
    return float(loss.detach())


@dataclass
class TrainingParts:
    """What `prepare_training` returns: the trainable parameters and what steps them."""

    params: list
    optimizer: torch.optim.Optimizer
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    lr_scheduler: Any
    noise_scheduler: Any

    def __iter__(self):  # params, optimizer, scaler, lr_scheduler, noise_scheduler = prepare_training(...)
        return iter((self.params, self.optimizer, self.scaler, self.lr_scheduler, self.noise_scheduler))


def prepare_training(method, base: BaseModel, device: torch.device, frozen_dtype: torch.dtype,
                     train_cfg=None) -> TrainingParts:
    """Place a set-up method for training, the one way `scedit train` and `scedit bench` do it.

    Frozen weights in `frozen_dtype` (the VAE stays fp32 for SDXL in fp16: it overflows), trainable
    weights fp32, everything on `device`; where `train_cfg.lean` resolves on (`lean.resolve_lean`),
    frozen convolutions of the U-Net and the method's own models keep only what backward needs
    (`lean.lean_autograd`: frozen convs keep no input, norms no fp32 copies, resnet norm+SiLU and
    GEGLU recompute elementwise values; same gradients);
    AdamW, the learning-rate schedule and the fp16 GradScaler from `train_cfg` (a recipe's
    `TrainSection`; default: Table 4's AdamW, lr 5e-5, weight decay 0.01, constant).
    """
    from diffusers.optimization import get_scheduler

    from ..lean import lean_autograd, resolve_lean
    from ..recipes import TrainSection

    cfg = train_cfg if train_cfg is not None else TrainSection()
    device = torch.device(device)
    vae = base.vae
    cast_frozen(_unique([method.unet, *method.trainable_modules(), *base.text_encoders]), frozen_dtype)
    if vae is not None:
        cast_frozen([vae], vae_dtype(base.is_sdxl, frozen_dtype))
    for m in _unique([method.unet, vae, *base.text_encoders, *method.extra_modules()]):
        m.to(device)
    for p in method.trainable_parameters():
        if p.dtype != torch.float32:
            p.data = p.data.float()
    # Exact (identical gradients); decided per call, so trainable convs (ControlNet copies, full
    # fine-tuning) train as before.
    exact = resolve_lean(cfg.lean)
    for m in _unique([method.unet, *method.extra_modules()]):
        lean_autograd(m, recompute_feed_forward=cfg.recompute_feed_forward, exact=exact)
    if cfg.gradient_checkpointing:
        method.enable_gradient_checkpointing()
    if vae is not None:
        vae.eval()
    for te in base.text_encoders:
        te.eval()
    method.train(True)
    params = method.trainable_parameters()
    if not params:
        raise SceditError(f"method {method.name!r} has no trainable parameters with this configuration")
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_steps)
    scaler = torch.amp.GradScaler(device.type) if cfg.mixed_precision == "fp16" else None
    return TrainingParts(params, optimizer, scaler, lr_scheduler, make_noise_scheduler(base))


# --------------------------------------------------------------------------


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
    plan: dict = field(default_factory=dict)
    dry_run: bool = False
    is_main_process: bool = True
    cache: str | None = None

    def summary(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "losses"}
        d["loss_points"] = len(self.losses)
        return d


def _unique(modules):
    seen, out = set(), []
    for m in modules:
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to checkpoint and stop after the current step; a second SIGINT aborts."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _all_reduce_grads(params, world: int) -> None:
    import torch.distributed as dist

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off: off + n].view_as(g))
        off += n


def train(recipe: str | Path | dict | Recipe, overrides: list[str] | dict | None = None, resume: str | None = None,
          dry_run: bool = False, overwrite: bool = False) -> TrainResult:
    """Train as the recipe says. `resume`: 'latest' or a checkpoint folder. `dry_run`: plan only.
    `overwrite`: start afresh in an output folder that holds another run (see `rundir.py`)."""
    from ..methods import build_method

    if resume and overwrite:
        raise SceditError("--resume continues the run in train.output_dir, --overwrite replaces it: give one")
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    method = build_method(r.method_name, r.method)
    if dry_run:
        from .plan import dry_run_plan

        plan = dry_run_plan(r, method)
        return TrainResult(r.train.output_dir, r.method_name, r.train.max_steps, plan=plan, dry_run=True)
    return _Trainer(r, method, resume, overwrite).run()


class _Trainer:
    def __init__(self, r: Recipe, method, resume: str | None, overwrite: bool = False):
        self.r, self.method, self.resume, self.overwrite = r, method, resume, overwrite

    def run(self) -> TrainResult:
        from accelerate import Accelerator
        from ..data import load_training_data
        from ..loader import training_loader
        from ..models import load_base
        from .checkpoint import apply_checkpoint, read_for_resume, save_checkpoint
        from .rundir import check_fresh_run, check_resume_recipe, clear_previous_run, recipe_defaults
        from .logging import ProgressLog, save_grid, save_loss_curve
        from .validation import sample_images

        r, method = self.r, self.method
        t0 = time.perf_counter()
        out = check_output_location(r.train.output_dir, f"{r.path or 'recipe'}: train.output_dir")
        # accelerate keeps one global state per process; a second train() call in the same
        # process (library use) may ask for another precision: start from a clean state.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()
        acc = Accelerator(
            mixed_precision=r.train.mixed_precision,
            log_with="tensorboard" if r.logging.tensorboard else None,
            project_dir=str(out),
        )
        device, rank, world, main = acc.device, acc.process_index, acc.num_processes, acc.is_main_process
        frozen = resolve_frozen_dtype(r, device)
        seed = r.train.seed

        _quiet_loaders()
        # Every refusal (output folder, checkpoint, data) comes before the model load and before anything is written.
        ckpt = None
        if self.resume:
            ckpt = read_for_resume(out, self.resume, main)
            check_resume_recipe(ckpt.path, ckpt.recipe, r.to_dict(), recipe_defaults(r))
            # At max_steps exactly (the final save was interrupted), resuming writes the outputs.
            if int(ckpt.state["step"]) > r.train.max_steps:
                raise SceditError(f"{ckpt.path}: already at step {ckpt.state['step']} > train.max_steps "
                                  f"{r.train.max_steps}; raise train.max_steps to train further")
        else:
            check_fresh_run(out, self.overwrite)
        data = load_training_data(r.data, method.conditions, seed)  # data errors first: no model load to wait for
        from ..tuners.card import caption_trigger

        trigger = caption_trigger(data.first_captions())  # for the model card
        base = load_base(r.model.source, dtype=None, config=r.model.single_file_config or None)
        if r.model.arch and r.model.arch.replace("-base", "") != arch_of(base):
            raise SceditError(
                f"{r.path or 'recipe'}: model.arch = {r.model.arch!r} but {r.model.source} is a {arch_of(base)} model; "
                "fix model.arch or model.source"
            )
        prediction_type = r.model.prediction_type or base.prediction_type
        from accelerate.utils import set_seed

        set_seed(seed)  # the trainable modules' initial weights (e.g. the tuners' down projections)
        method.setup(base)
        params, optimizer, scaler, lr_scheduler, noise_scheduler = prepare_training(method, base, device, frozen,
                                                                                    r.train)
        amp_dtype = autocast_dtype(r.train.mixed_precision)
        loss_options = LossOptions.from_train(r.train)
        ema = None
        if r.train.ema_decay:
            from .ema import EMA

            ema = EMA(method.named_trainable_parameters(), r.train.ema_decay)
        # The cache: VAE posteriors and text embeddings computed once (see cache.py); said either way.
        from ..cache import attach_cache

        data, cache_note = attach_cache(r.data.cache, r.data.cache_dir, data, base, device, build_here=main,
                                        barrier=acc.wait_for_everyone)
        result_cache_note = cache_note
        if cache_note and main:
            from ..console import info

            info(cache_note)

        result = TrainResult(str(out), method.name, r.train.max_steps, is_main_process=main)
        result.cache = result_cache_note
        history: list[list[float]] = []
        skipped, skipped_examples = 0, []
        start = 0
        if ckpt is not None:
            state = apply_checkpoint(ckpt, method, optimizer, lr_scheduler, scaler, device, ema)
            start = int(state["step"])
            history = [list(x) for x in state.get("history", [])]
            skipped = int(state.get("skipped", 0))
            skipped_examples = list(state.get("skipped_examples", []))
            result.resumed_from = str(ckpt.path)

        A = r.train.gradient_accumulation_steps
        loader, sampler = training_loader(data, r.train, r.data.num_workers, rank, world, start)
        if main:
            if self.overwrite:
                clear_previous_run(out)
            out.mkdir(parents=True, exist_ok=True)
            if r.logging.tensorboard:
                acc.init_trackers("tensorboard", config=_flat_config(r))
        autocast = acc.autocast
        val_items = None

        def ckpt_state(step):
            return {"history": history, "skipped": skipped, "skipped_examples": skipped_examples[:20],
                    "batch_size": r.train.batch_size, "recipe": r.to_dict(), "world_size": world}

        saved_steps = set()  # an interrupt right after a periodic checkpoint must not save that step twice

        def checkpoint(step):
            if main and step not in saved_steps:
                p = save_checkpoint(out, step, method, optimizer, lr_scheduler, scaler, ckpt_state(step),
                                    r.checkpoint.keep_last, ema)
                saved_steps.add(step)
                result.checkpoints.append(str(p))
            acc.wait_for_everyone()

        def validate(step):
            nonlocal val_items
            if val_items is None:
                val_items = data.validation_items(r.validation.num_images)
            prompts = list(r.validation.prompts) or [it["caption"] for it in val_items]
            prompts = prompts[: r.validation.num_images]
            conds = None
            if method.conditions:
                if not val_items:
                    return
                k = len(prompts)
                items = [val_items[i % len(val_items)] for i in range(k)]
                conds = [torch.stack([it["conditions"][c] for it in items]) for c in range(len(method.conditions))]
            imgs = sample_images(method, base, prompts, conds, r.data.resolution, r.validation.steps,
                                 r.validation.guidance_scale, r.validation.seed, device, autocast)
            rows = []
            if conds:
                from PIL import Image

                for c in conds:
                    rows.append([Image.fromarray((c[i][:3].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
                                 for i in range(len(imgs))])
            rows.append(imgs)
            path = save_grid(rows, out / "samples" / f"step-{step:08d}.png")
            result.samples.append(str(path))

        prog = ProgressLog(r.train.max_steps, start, r.logging.every, enabled=main)
        step = start
        it = iter(loader)
        with _StopFlag() as stop:
            try:
                while step < r.train.max_steps:
                    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
                    step_total = sampler.step_size(step)  # r.train.batch_size, or a bucket's short last batch
                    for micro in range(A):
                        batch = next(it)
                        for reason in batch["skipped"]:
                            skipped += 1
                            if len(skipped_examples) < 20:
                                skipped_examples.append(reason)
                        if batch["size"] == 0:
                            continue
                        # Every draw of a sample (posterior, noise, timestep) is seeded by its stream
                        # position: results do not depend on accumulation, process count or resume point.
                        g = [torch.Generator(device).manual_seed(step_seed(seed, p)) for p in batch["positions"]]
                        sb = self._step_batch(base, batch, device, g, text_embeddings, time_ids)
                        loss = training_step(method, base, sb, optimizer, noise_scheduler, g, amp_dtype, scaler,
                                             accumulate=True, loss_scale=batch["size"] / (step_total / world),
                                             prediction_type=prediction_type, loss_options=loss_options)
                        loss_sum += torch.tensor([loss * batch["size"], batch["size"]],
                                                 dtype=torch.float64, device=device)
                    if world > 1:
                        _all_reduce_grads(params, world)
                        loss_sum = acc.reduce(loss_sum, reduction="sum")
                    n = float(loss_sum[1])
                    mean_loss = float(loss_sum[0]) / n if n else float("nan")
                    if n:  # the accumulated gradients: one step, as training_step does without accumulate
                        optimizer_step(optimizer, params, scaler, r.train.max_grad_norm)
                        if ema is not None:
                            ema.update()
                    else:
                        optimizer.zero_grad(set_to_none=True)
                    lr_scheduler.step()
                    step += 1
                    history.append([step, mean_loss])
                    prog.update(step, mean_loss)
                    if r.logging.tensorboard and step % r.logging.every == 0 and not math.isnan(mean_loss):
                        acc.log({"train/loss": mean_loss, "train/lr": lr_scheduler.get_last_lr()[0]}, step=step)
                    if r.checkpoint.every and step % r.checkpoint.every == 0 and step < r.train.max_steps:
                        checkpoint(step)
                    if r.validation.every and step % r.validation.every == 0 and main:
                        validate(step)
                    if stop.requested:
                        result.interrupted = True
                        break
            except (StopIteration, RuntimeError):
                if not stop.requested:
                    raise
                result.interrupted = True  # a DataLoader worker died of the same Ctrl-C
        prog.close()
        checkpoint(step)
        if world > 1:
            t = acc.reduce(torch.tensor([skipped], device=device), reduction="sum")
            skipped = int(t.item())
        result.steps = step
        result.losses = history
        vals = [v for _, v in history if not math.isnan(v)]
        result.first_loss = vals[0] if vals else None
        result.final_loss = vals[-1] if vals else None
        result.skipped, result.skipped_examples = skipped, skipped_examples[:5]
        if main:
            if not result.interrupted:
                extra = {"recipe": r.name, "steps": step, "prediction_type": prediction_type}
                result.outputs = [str(p) for p in method.save(out, base_source=r.model.source, extra=extra)]
                if ema is not None:  # beside the trained weights, same format
                    with ema.swapped_in():
                        result.outputs += [str(p) for p in method.save(out / "ema", base_source=r.model.source,
                                                                       extra={**extra, "ema_decay": ema.decay})]
            if r.logging.loss_curve:
                curve = save_loss_curve(history, out / "loss.png", f"{r.name}: {method.name}")
                result.loss_curve = str(curve) if curve else None
            if result.outputs:
                from ..tuners.card import write_training_cards

                write_training_cards([Path(p) for p in result.outputs], r, step, result.final_loss, out, trigger)
        if r.logging.tensorboard and main:
            acc.end_training()
        acc.wait_for_everyone()
        result.seconds = time.perf_counter() - t0
        return result

    def _step_batch(self, base, batch, device, g, text_embeddings, time_ids) -> StepBatch:
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
        conds = [c.to(device) for c in batch["conditions"]] if self.method.conditions else None
        return StepBatch(latents, ehs, added, conds)


def _quiet_loaders() -> None:
    """The training bar is the one progress display; loaders' own bars would interleave with it."""
    import datasets
    from diffusers.utils import logging as dlog

    dlog.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _flat_config(r: Recipe) -> dict:
    flat = {}
    for sec, vals in r.to_dict().items():
        if isinstance(vals, dict):
            for k, v in vals.items():
                flat[f"{sec}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat
