"""What the lean autograd functions share: the patch tag, the compute dtype under autocast, batch slices."""

from __future__ import annotations

import math

import torch

PATCHED = "_scedit_lean"

# Backward passes work on batch slices of at most this many elements (one sample at least): 2**25
# fp32 elements are 128 MiB of temporaries per slice, a few percent of a real-size step's peak.
BACKWARD_SLICE_ELEMENTS = 1 << 25


def batch_slices(t: torch.Tensor):
    """Slices over dim 0 of `t` with at most BACKWARD_SLICE_ELEMENTS elements each (one row at least)."""
    return row_slices(t.shape)


def row_slices(shape) -> list[slice]:
    """`batch_slices` for a tensor of `shape` (one that need not exist)."""
    n = shape[0]
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, BACKWARD_SLICE_ELEMENTS // per_row)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def amp_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype a matmul or convolution computes in on `device_type` now: autocast's where it is
    enabled, else `default` (the layer's own; also where autocast does not exist, e.g. "meta")."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return default
    return torch.get_autocast_dtype(device_type)


def cast_or_none(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def accumulate(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
    if part is None:
        return total
    return part if total is None else total + part
