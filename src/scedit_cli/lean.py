"""Exact activation-memory savings for training on a (mostly) frozen base.

Autograd keeps more than backward needs in four places that dominate an SD
U-Net's activations:

- PyTorch's convolution backward keeps the layer's *input* for the weight
  gradient even when the weight is frozen; in SCEdit training every convolution
  of the base is frozen. `_FrozenConv2d` keeps only the weight (needed for the
  input gradient).
- GroupNorm / LayerNorm under fp16 autocast run in fp32, and autograd keeps
  the fp32 *copy* of their input (twice the bytes of the fp16 tensor that
  already exists). `_Norm` keeps the input as it came (no copy) plus the
  per-group statistics, and casts again in backward.
- In every ResnetBlock2D a GroupNorm feeds a SiLU, and the SiLU keeps the
  norm's fp32 output. `_Norm` with `silu=True` applies both and recomputes the
  norm's output in backward (an elementwise pass) instead of keeping it.
- GEGLU (the transformer feed-forward) keeps its projection, a copy of one
  half of it and the GELU output; `_GegluProduct` keeps the projection only and
  recomputes the GELU in backward.

Forward values and gradients are the same ops on the same dtypes as the stock
path (tested for equality), so every method gets them alike and comparisons
stay fair. Each patched module decides at each call: with grad disabled
(sampling, validation) the stock forward runs.

One trade of time for memory is optional (`recompute_feed_forward`, recipe key
`train.recompute_feed_forward`): each transformer feed-forward's GEGLU keeps
only its input and runs again in backward (`torch.utils.checkpoint`). Its
8C-wide projection is the largest single activation of a transformer block; the
recompute costs that one projection matmul per block (the feed-forward's output
projection is not rerun). Unlike diffusers' `enable_gradient_checkpointing`
(whole resnets and transformers), attention and convolutions are not recomputed.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

_PATCHED = "_scedit_lean"
_SILU_DONE = "_scedit_silu_applied"  # tag on a fused norm's output: the resnet's SiLU is already applied

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


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


class _Norm(torch.autograd.Function):
    """group_norm (groups > 0) or layer_norm (groups == 0), optionally followed by SiLU, keeping
    only the uncast input and the statistics for backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, shape, eps, silu, dtype):
        # The native kernels want contiguous tensors (stock group_norm / layer_norm make them so).
        x = x.contiguous()
        xc, w, b = x.to(dtype), _cast(weight, dtype), _cast(bias, dtype)
        y, mean, rstd = _norm_forward(xc, w, b, groups, shape, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.conf = (groups, shape, eps, silu, dtype)
        return F.silu(y) if silu else y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        groups, shape, eps, silu, dtype = ctx.conf
        xc, w, b = x.to(dtype), _cast(weight, dtype), _cast(bias, dtype)
        grad = grad.to(dtype).contiguous()  # e.g. from a permute in a linear-projection transformer
        if silu:
            y = _norm_forward(xc, w, b, groups, shape, eps)[0]
            grad = torch.ops.aten.silu_backward(grad, y)
            del y
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        if groups:
            n, c = x.shape[:2]
            gx, gw, gb = torch.ops.aten.native_group_norm_backward(
                grad, xc, mean, rstd, w, n, c, x.numel() // (n * c), groups, mask)
        else:
            gx, gw, gb = torch.ops.aten.native_layer_norm_backward(grad, xc, shape, mean, rstd, w, b, mask)
        return (_cast(gx, x.dtype), _cast(gw, weight.dtype) if gw is not None else None,
                _cast(gb, bias.dtype) if gb is not None else None, None, None, None, None, None)


def _norm_forward(x, w, b, groups, shape, eps):
    if groups:
        n, c = x.shape[:2]
        return torch.ops.aten.native_group_norm(x, w, b, n, c, x.numel() // (n * c), groups, eps)
    return torch.ops.aten.native_layer_norm(x, shape, w, b, eps)


def _wants_lean(x: torch.Tensor, *params) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad for p in params))


def _lean_group_norm(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    silu = self.__dict__.get(_SILU_DONE, False)
    if not _wants_lean(x, self.weight, self.bias):
        return nn.GroupNorm.forward(self, x)
    out = _Norm.apply(x, self.weight, self.bias, self.num_groups, None, self.eps, silu, _norm_compute_dtype(x))
    if silu:
        setattr(out, _SILU_DONE, True)
    return out


def _lean_layer_norm(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    if not _wants_lean(x, self.weight, self.bias):
        return nn.LayerNorm.forward(self, x)
    return _Norm.apply(x, self.weight, self.bias, 0, list(self.normalized_shape), self.eps, False,
                       _norm_compute_dtype(x))


class _SiLUUnlessFused(nn.SiLU):
    """A resnet's nonlinearity: SiLU, except on a fused norm's output, where it is already applied."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if getattr(x, _SILU_DONE, False) else F.silu(x)


class _GegluProduct(torch.autograd.Function):
    """a * gelu(g) for (a, g) = h.chunk(2, -1), keeping only h for backward."""

    @staticmethod
    def forward(ctx, h, approximate):
        a, g = h.chunk(2, dim=-1)
        ctx.save_for_backward(h)
        ctx.approximate = approximate
        return a * F.gelu(g, approximate=approximate)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        a, g = h.chunk(2, dim=-1)
        ga = grad * F.gelu(g, approximate=ctx.approximate)
        gg = torch.ops.aten.gelu_backward(grad * a, g, approximate=ctx.approximate)
        return torch.cat([ga, gg], dim=-1), None


def _lean_geglu(self, hidden_states, *args, **kwargs):
    h = self.proj(hidden_states)
    if not (torch.is_grad_enabled() and h.requires_grad) or h.device.type == "mps":
        a, g = h.chunk(2, dim=-1)
        return a * self.gelu(g)
    return _GegluProduct.apply(h, "none")


def _recomputed_geglu(self, hidden_states, *args, **kwargs):
    if torch.is_grad_enabled() and hidden_states.requires_grad:
        return torch.utils.checkpoint.checkpoint(_lean_geglu, self, hidden_states, use_reentrant=False)
    return _lean_geglu(self, hidden_states)


class _FrozenConv2d(torch.autograd.Function):
    """conv2d whose backward returns only the input gradient (weight and bias frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(weight)
        ctx.conf = (x.shape, x.dtype, stride, padding, dilation, groups)
        return out

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, dtype, stride, padding, dilation, groups = ctx.conf
        gx = torch.nn.grad.conv2d_input(shape, weight.to(grad.dtype), grad, stride, padding, dilation, groups)
        return gx.to(dtype), None, None, None, None, None, None


def _lean_conv(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    # Decided per call, so a layer that is later unfrozen (full fine-tuning, ControlNet copies)
    # trains exactly as before.
    weight_frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
    if (
        weight_frozen
        and torch.is_grad_enabled()
        and x.requires_grad
        and self.padding_mode == "zeros"
        and isinstance(self.padding, tuple)
    ):
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        w = self.weight.to(dtype)
        b = self.bias.to(dtype) if self.bias is not None else None
        return _FrozenConv2d.apply(x.to(dtype), w, b, self.stride, self.padding, self.dilation, self.groups)
    return nn.Conv2d.forward(self, x)


def _patch(module: nn.Module, forward) -> bool:
    if _PATCHED in module.__dict__:
        return False
    module.forward = types.MethodType(forward, module)
    module.__dict__[_PATCHED] = True
    return True


def lean_autograd(model: nn.Module, recompute_feed_forward: bool = False) -> dict[str, int]:
    """Apply every exact saving to `model` (convs, norms, fused resnet norm+SiLU, GEGLU) and, if asked,
    the feed-forward recompute; counts per kind. Idempotent; `restore_autograd` undoes it."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.resnet import ResnetBlock2D

    counts = {"conv": 0, "norm": 0, "norm_silu": 0, "geglu": 0, "feed_forward": 0}
    for m in model.modules():
        if isinstance(m, ResnetBlock2D) and type(m.nonlinearity) in (nn.SiLU, _SiLUUnlessFused):
            # norm1 always feeds the nonlinearity directly; norm2 unless scale-shift sits between.
            fused = [m.norm1] + ([m.norm2] if m.time_embedding_norm != "scale_shift" else [])
            if all(type(n) is nn.GroupNorm for n in fused):
                for n in fused:
                    if not n.__dict__.get(_SILU_DONE):
                        n.__dict__[_SILU_DONE] = True
                        counts["norm_silu"] += 1
                if type(m.nonlinearity) is nn.SiLU:
                    m.nonlinearity = _SiLUUnlessFused()
    for m in model.modules():
        if type(m) is nn.Conv2d:
            counts["conv"] += _patch(m, _lean_conv)
        elif type(m) is nn.GroupNorm and m.affine:
            counts["norm"] += _patch(m, _lean_group_norm)
        elif type(m) is nn.LayerNorm and len(m.normalized_shape) == 1:
            counts["norm"] += _patch(m, _lean_layer_norm)
        elif type(m) is GEGLU and getattr(m, "proj", None) is not None:
            done = _patch(m, _recomputed_geglu if recompute_feed_forward else _lean_geglu)
            counts["geglu"] += done
            counts["feed_forward"] += done and recompute_feed_forward
    return counts


def restore_autograd(model: nn.Module) -> None:
    """Undo `lean_autograd`: stock forwards and SiLU modules again."""
    for m in model.modules():
        m.__dict__.pop(_SILU_DONE, None)
        if m.__dict__.pop(_PATCHED, None):
            del m.forward
        if type(getattr(m, "nonlinearity", None)) is _SiLUUnlessFused:
            m.nonlinearity = nn.SiLU()
