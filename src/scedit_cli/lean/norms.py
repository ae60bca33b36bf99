"""Group / layer norms that keep their input as it came, and a resnet's norm + SiLU applied as one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import accumulate, batch_slices, cast_or_none

SILU_DONE = "_scedit_silu_applied"  # tag on a fused norm's output: the resnet's SiLU is already applied

_compute_dtypes: dict[tuple, torch.dtype] = {}


def _norm_compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype stock group/layer norm computes in for `x` under the current autocast state
    (fp32 under CUDA fp16 autocast; the input's own dtype elsewhere), found once per state."""
    dev = x.device.type
    on = torch.is_autocast_enabled(dev)
    key = (dev, x.dtype, on, torch.get_autocast_dtype(dev) if on else None)
    if key not in _compute_dtypes:
        with torch.no_grad():
            probe = torch.zeros(1, 1, 2, dtype=x.dtype, device=x.device)
            _compute_dtypes[key] = F.group_norm(probe, 1).dtype
    return _compute_dtypes[key]


class _Norm(torch.autograd.Function):
    """group_norm (groups > 0) or layer_norm (groups == 0), optionally followed by SiLU, keeping
    only the uncast input and the statistics for backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, shape, eps, silu, dtype):
        # The native kernels want contiguous tensors (stock group_norm / layer_norm make them so).
        x = x.contiguous()
        xc, w, b = x.to(dtype), cast_or_none(weight, dtype), cast_or_none(bias, dtype)
        y, mean, rstd = _norm_forward(xc, w, b, groups, shape, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.conf = (groups, shape, eps, silu, dtype)
        return F.silu(y) if silu else y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        groups, shape, eps, silu, dtype = ctx.conf
        w, b = cast_or_none(weight, dtype), cast_or_none(bias, dtype)
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        gx = torch.empty_like(x) if mask[0] else None
        gw = gb = None
        # Rows (samples for group norm, leading rows for layer norm) are independent, and mean/rstd
        # have them as their leading dim: slicing the batch gives the same values.
        for rows in batch_slices(x):
            xc = x[rows].to(dtype)
            g = grad[rows].to(dtype).contiguous()  # e.g. from a permute in a linear-projection transformer
            if silu:
                y = _norm_forward(xc, w, b, groups, shape, eps)[0]
                g = torch.ops.aten.silu_backward(g, y)
                del y
            if groups:
                n, c = xc.shape[:2]
                parts = torch.ops.aten.native_group_norm_backward(
                    g, xc, mean[rows], rstd[rows], w, n, c, xc.numel() // (n * c), groups, mask)
            else:
                parts = torch.ops.aten.native_layer_norm_backward(g, xc, shape, mean[rows], rstd[rows], w, b, mask)
            if mask[0]:
                gx[rows] = parts[0]
            gw = accumulate(gw, parts[1])
            gb = accumulate(gb, parts[2])
        return (gx, cast_or_none(gw, weight.dtype) if gw is not None else None,
                cast_or_none(gb, bias.dtype) if gb is not None else None, None, None, None, None, None)


def _norm_forward(x, w, b, groups, shape, eps):
    if groups:
        n, c = x.shape[:2]
        return torch.ops.aten.native_group_norm(x, w, b, n, c, x.numel() // (n * c), groups, eps)
    return torch.ops.aten.native_layer_norm(x, shape, w, b, eps)


def _wants_lean(x: torch.Tensor, *params) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad for p in params))


def lean_group_norm(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    silu = self.__dict__.get(SILU_DONE, False)
    if not _wants_lean(x, self.weight, self.bias):
        return nn.GroupNorm.forward(self, x)
    out = _Norm.apply(x, self.weight, self.bias, self.num_groups, None, self.eps, silu, _norm_compute_dtype(x))
    if silu:
        setattr(out, SILU_DONE, True)
    return out


def lean_layer_norm(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    if not _wants_lean(x, self.weight, self.bias):
        return nn.LayerNorm.forward(self, x)
    return _Norm.apply(x, self.weight, self.bias, 0, list(self.normalized_shape), self.eps, False,
                       _norm_compute_dtype(x))


class SiLUUnlessFused(nn.SiLU):
    """A resnet's nonlinearity: SiLU, except on a fused norm's output, where it is already applied."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if getattr(x, SILU_DONE, False) else F.silu(x)
