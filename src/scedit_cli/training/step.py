"""One training step, shared by `scedit train` and `scedit bench`.

Noise, timesteps, the target by prediction type (epsilon / v_prediction /
sample) and the MSE loss are written here once; a `Method` only supplies its
trainable modules and `predict`. Every random draw of a sample comes from a
generator seeded by `step_seed(seed, position)`, so the draws depend neither on
gradient accumulation nor on the number of processes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SceditError
from ..models import BaseModel
from ..precision import cast_frozen, vae_dtype


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
                   lr_scheduler=None, clip_grad_norm=torch.nn.utils.clip_grad_norm_) -> None:
    """Unscale (fp16), clip to `max_grad_norm` (0: no clipping), step, zero the gradients.
    `clip_grad_norm`: the trainer passes `accelerator.clip_grad_norm_` (the norm over every shard)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm:
        clip_grad_norm(params, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def forward_loss(method, noise_scheduler, prediction_type: str, batch: StepBatch, generator=None,
                 autocast_dtype: torch.dtype | None = None, loss_options=None) -> torch.Tensor:
    """`compute_loss` under autocast to `autocast_dtype` (None: full precision)."""
    device = batch.latents.device
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        return compute_loss(method, noise_scheduler, prediction_type, batch, generator, loss_options)


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
    loss = forward_loss(method, noise_scheduler, prediction_type or base.prediction_type, batch, generator,
                        autocast_dtype, loss_options)
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
    # Undoes what preparing did to the autograd of the caller's modules (lean patches, gradient
    # checkpointing switched on here); the trainer calls it when training ends, however it ends.
    restore: Any = field(default=lambda: None, repr=False)

    def __iter__(self):  # params, optimizer, scaler, lr_scheduler, noise_scheduler = prepare_training(...)
        return iter((self.params, self.optimizer, self.scaler, self.lr_scheduler, self.noise_scheduler))


def prepare_training(method, base: BaseModel, device: torch.device, frozen_dtype: torch.dtype,
                     train_cfg=None) -> TrainingParts:
    """Place a set-up method for training, the one way `scedit train` and `scedit bench` do it.

    Frozen weights in `frozen_dtype` (the VAE stays fp32 for SDXL in fp16: it overflows), trainable
    weights fp32, everything on `device`; where `train_cfg.lean` resolves on (`lean.resolve_lean`),
    frozen convolutions of the U-Net and the method's own models keep only what backward needs
    (`lean.lean_autograd`: frozen convs keep no input, norms no fp32 copies, resnet norm+SiLU and
    GEGLU recompute elementwise values; same gradients); on a CPU, where `train_cfg.prepack` resolves on
    (`prepack.resolve_prepack`), frozen convolutions whose weights dwarf their outputs run on weights
    reordered for oneDNN once (`prepack.prepack_convs`; same values to float rounding);
    AdamW, the learning-rate schedule and the fp16 GradScaler from `train_cfg` (a recipe's
    `TrainSection`; default: Table 4's AdamW, lr 5e-5, weight decay 0.01, constant).
    """
    from diffusers.optimization import get_scheduler

    from ..lean import lean_autograd, resolve_lean, restore_autograd
    from ..prepack import prepack_convs, resolve_prepack, restore_convs
    from ..recipes import TrainSection

    cfg = train_cfg if train_cfg is not None else TrainSection()
    device = torch.device(device)
    vae = base.vae
    cast_frozen(unique_modules([method.unet, *method.trainable_modules(), *base.text_encoders]), frozen_dtype)
    if vae is not None:
        cast_frozen([vae], vae_dtype(base.is_sdxl, frozen_dtype))
    for m in unique_modules([method.unet, vae, *base.text_encoders, *method.extra_modules()]):
        m.to(device)
    for p in method.trainable_parameters():
        if p.dtype != torch.float32:
            p.data = p.data.float()
    # Exact (identical gradients); decided per call, so trainable convs (ControlNet copies, full
    # fine-tuning) train as before.
    exact = resolve_lean(cfg.lean)
    pack = device.type == "cpu" and resolve_prepack(cfg.prepack)
    models = unique_modules([method.unet, *method.extra_modules()])
    patched = [m for m in models
               if any(lean_autograd(m, recompute_feed_forward=cfg.recompute_feed_forward, exact=exact).values())]
    # After lean, so a frozen conv that is not packed still keeps no input (it wraps lean's forward).
    packed = [m for m in models if prepack_convs(m)] if pack else []
    checkpointing = []
    if cfg.gradient_checkpointing:
        checkpointing = [m for m in models if getattr(m, "is_gradient_checkpointing", True) is False]
        method.enable_gradient_checkpointing()

    def restore():  # only what this call switched on: a caller's own patches stay
        for m in packed:  # first: it wraps lean's forward
            restore_convs(m)
        for m in patched:
            restore_autograd(m)
        for m in checkpointing:
            if m.is_gradient_checkpointing:
                m.disable_gradient_checkpointing()

    if vae is not None:
        vae.eval()
    for te in base.text_encoders:
        te.eval()
    method.train(True)
    params = method.trainable_parameters()
    if not params:
        restore()
        raise SceditError(f"method {method.name!r} has no trainable parameters with this configuration")
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_steps)
    scaler = torch.amp.GradScaler(device.type) if cfg.mixed_precision == "fp16" else None
    return TrainingParts(params, optimizer, scaler, lr_scheduler, make_noise_scheduler(base), restore)



def unique_modules(modules):
    seen, out = set(), []
    for m in modules:
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out

