"""precision.py: the one place that decides dtypes for training, the cache, the dry-run plan and bench."""

from __future__ import annotations

import pytest
import torch

from scedit_cli.errors import SceditError
from scedit_cli.models import BaseModel
from scedit_cli.precision import (autocast_dtype, cast_encoders, inference_dtype, mixed_precision_name,
                                  resolve_precision)
from tiny_models import make_tiny_unet


def test_autocast_names_round_trip():
    for name in ("no", "fp16", "bf16"):
        assert mixed_precision_name(autocast_dtype(name)) == name
    assert autocast_dtype("no") is None


def test_bench_precision_and_inference_dtype_by_device():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) is None and resolve_precision("auto", gpu) == torch.float16
    assert resolve_precision("bf16", cpu) == torch.bfloat16 and resolve_precision("no", gpu) is None
    with pytest.raises(SceditError, match="--precision fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(SceditError, match="choose auto, no, fp16 or bf16"):
        resolve_precision("fp8", gpu)
    assert inference_dtype(cpu) == torch.float32 and inference_dtype(gpu) == torch.float16


def test_cast_encoders_keeps_sdxl_vae_fp32_in_fp16():
    from types import SimpleNamespace

    vae, te = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    for m in (vae, te):
        m.requires_grad_(False)
    base = BaseModel(SimpleNamespace(unet=make_tiny_unet(), vae=vae, text_encoder=te, text_encoder_2=None),
                     "x", True, "epsilon", 8)
    cast_encoders(base, torch.float16)
    assert te.weight.dtype == torch.float16 and vae.weight.dtype == torch.float32
    base.is_sdxl = False
    cast_encoders(base, torch.float16)
    assert vae.weight.dtype == torch.float16
