"""Which dtype each part of a run computes in: one place for training, the cache, the dry-run plan and bench.

Frozen weights (U-Net, text encoders, VAE) may run in half precision on a GPU; trainable weights
stay fp32; autocast follows `train.mixed_precision`. One exception: SDXL's VAE overflows in fp16,
so it stays fp32 whenever the frozen dtype is fp16.
"""

from __future__ import annotations

import torch

from .errors import SceditError
from .models import parse_dtype

AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype of `train.mixed_precision` (None: 'no', fp32 throughout)."""
    return AUTOCAST.get(mixed_precision)


def mixed_precision_name(dtype: torch.dtype | None) -> str:
    """The `train.mixed_precision` value of an autocast dtype (inverse of `autocast_dtype`)."""
    return next((k for k, v in AUTOCAST.items() if v == dtype), "no")


def resolve_frozen_dtype(r, device: torch.device) -> torch.dtype:
    """The dtype of a recipe's frozen weights on `device` (`model.frozen_dtype`, 'auto' follows
    `train.mixed_precision` on a GPU and is fp32 on a CPU)."""
    mp = r.train.mixed_precision
    want = r.model.frozen_dtype
    if want == "auto":
        if device.type == "cpu" or mp == "no":
            return torch.float32
        return parse_dtype(mp)
    dtype = parse_dtype(want)
    if dtype != torch.float32 and device.type == "cpu":
        raise SceditError(
            f"model.frozen_dtype = {want!r} needs a GPU (CPU kernels do not mix half-precision weights with "
            "fp32 activations); use frozen_dtype = 'auto' or 'fp32' on a CPU"
        )
    return dtype


def vae_dtype(is_sdxl: bool, frozen: torch.dtype) -> torch.dtype:
    """SDXL's VAE stays fp32 where the frozen weights are fp16 (it overflows in fp16)."""
    return torch.float32 if (is_sdxl and frozen == torch.float16) else frozen


def cast_frozen(modules, dtype: torch.dtype) -> None:
    """Cast the frozen floating-point parameters of `modules` to `dtype` in place (trainable ones stay)."""
    for m in modules:
        for p in m.parameters():
            if not p.requires_grad and p.dtype.is_floating_point and p.dtype != dtype:
                p.data = p.data.to(dtype)


def cast_encoders(base, frozen: torch.dtype) -> None:
    """The text encoders in `frozen`, the VAE in `vae_dtype`: as training runs them, so the cache's
    fingerprints and encodings are the ones training looks up."""
    cast_frozen(base.text_encoders, frozen)
    if base.vae is not None:
        cast_frozen([base.vae], vae_dtype(base.is_sdxl, frozen))


def inference_dtype(device: torch.device) -> torch.dtype:
    """The dtype sampling loads a base in unless told: fp16 on a GPU, fp32 on a CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """A benchmark's `--precision` as an autocast dtype (None: fp32). 'auto' is the paper's AMP fp16 on a
    GPU and fp32 on a CPU."""
    if precision not in ("auto", "no", *AUTOCAST):
        raise SceditError(f"--precision {precision!r}: choose auto, no, fp16 or bf16")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "no":
        return None
    if device.type == "cpu" and precision == "fp16":
        raise SceditError("--precision fp16 needs a GPU; use --precision no (or bf16) on a CPU")
    return AUTOCAST[precision]
