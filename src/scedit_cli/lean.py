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
- In every ResnetBlock2D (and the U-Net's output head) a GroupNorm feeds a
  SiLU, and the SiLU keeps the norm's fp32 output. `_Norm` with `silu=True`
  applies both and recomputes the norm's output in backward (an elementwise
  pass) instead of keeping it.
- GEGLU (the transformer feed-forward) keeps its projection, a copy of one
  half of it and the GELU output; `_GegluProduct` keeps the projection only and
  recomputes the GELU in backward.

Their backward passes also bound the transient memory on top of what is kept:
the norms and the GEGLU work through the batch in slices of at most
`BACKWARD_SLICE_ELEMENTS` elements (the fp32 temporaries of one 64x64 GroupNorm
at batch 32 would otherwise be ~2 GB, a GEGLU's fp16 ones ~1.3 GB).

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

# Backward passes work on batch slices of at most this many elements (one sample at least): 2**25
# fp32 elements are 128 MiB of temporaries per slice, a few percent of a real-size step's peak.
BACKWARD_SLICE_ELEMENTS = 1 << 25


def _batch_slices(t: torch.Tensor):
    """Slices over dim 0 of `t` with at most BACKWARD_SLICE_ELEMENTS elements each (one row at least)."""
    n = t.shape[0]
    per_row = max(1, t.numel() // max(n, 1))
    step = max(1, BACKWARD_SLICE_ELEMENTS // per_row)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def amp_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype a matmul or convolution computes in on `device_type` now: autocast's where it is
    enabled, else `default` (the layer's own; also where autocast does not exist, e.g. "meta")."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return default
    return torch.get_autocast_dtype(device_type)


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
        w, b = _cast(weight, dtype), _cast(bias, dtype)
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        gx = torch.empty_like(x) if mask[0] else None
        gw = gb = None
        # Rows (samples for group norm, leading rows for layer norm) are independent, and mean/rstd
        # have them as their leading dim: slicing the batch gives the same values.
        for rows in _batch_slices(x):
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
            gw = _accumulate(gw, parts[1])
            gb = _accumulate(gb, parts[2])
        return (gx, _cast(gw, weight.dtype) if gw is not None else None,
                _cast(gb, bias.dtype) if gb is not None else None, None, None, None, None, None)


def _accumulate(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
    if part is None:
        return total
    return part if total is None else total + part


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
        grad_h = torch.empty_like(h)
        for rows in _batch_slices(h):
            a, g = h[rows].chunk(2, dim=-1)
            grad_a, grad_g = grad_h[rows].chunk(2, dim=-1)
            torch.mul(grad[rows], F.gelu(g, approximate=ctx.approximate), out=grad_a)
            grad_g.copy_(torch.ops.aten.gelu_backward(grad[rows] * a, g, approximate=ctx.approximate))
        return grad_h, None


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
        dtype = amp_dtype(x.device.type, x.dtype)
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


def resolve_lean(setting: bool | str) -> bool:
    """Whether the exact savings are applied for recipe value `setting` (true / false / "auto").

    "auto" is on, on every device: on CUDA they bound the batch; on a CPU (2 cores, SD 1.5, 256 px,
    batch 1, fp32) step times with and without them did not separate under load (faster with them
    in 2 of 3 rounds, benchmarks/results/peers-cpu-256.json), for 0.63x the saved activations.
    `false` is there to rule them out or to time a machine where they cost.
    """
    return setting if isinstance(setting, bool) else True


def lean_autograd(model: nn.Module, recompute_feed_forward: bool = False, exact: bool = True) -> dict[str, int]:
    """Apply every exact saving to `model` (convs, norms, fused resnet norm+SiLU, GEGLU) and, if asked,
    the feed-forward recompute; counts per kind. `exact=False`: only the feed-forward recompute (if
    asked). Idempotent; `restore_autograd` undoes it."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.resnet import ResnetBlock2D

    counts = {"conv": 0, "norm": 0, "norm_silu": 0, "geglu": 0, "feed_forward": 0}
    if not exact:
        if recompute_feed_forward:
            for m in model.modules():
                if type(m) is GEGLU and getattr(m, "proj", None) is not None:
                    done = _patch(m, _recomputed_geglu)
                    counts["geglu"] += done
                    counts["feed_forward"] += done
        return counts
    for m in model.modules():
        if isinstance(m, ResnetBlock2D):
            # norm1 always feeds the nonlinearity directly; norm2 unless scale-shift sits between.
            fused = [m.norm1] + ([m.norm2] if m.time_embedding_norm != "scale_shift" else [])
            counts["norm_silu"] += _fuse_silu(m, fused, "nonlinearity")
        elif isinstance(getattr(m, "conv_norm_out", None), nn.GroupNorm):
            # The U-Net's output head: conv_norm_out -> conv_act -> conv_out (its SiLU would keep
            # the fp32 norm output, full resolution and batch).
            counts["norm_silu"] += _fuse_silu(m, [m.conv_norm_out], "conv_act")
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


def _fuse_silu(owner: nn.Module, norms: list[nn.Module], act_name: str) -> int:
    """Let `norms` apply the SiLU that `owner.<act_name>` applies right after them; how many newly."""
    if type(getattr(owner, act_name, None)) not in (nn.SiLU, _SiLUUnlessFused):
        return 0
    if not all(type(n) is nn.GroupNorm for n in norms):
        return 0
    done = 0
    for n in norms:
        if not n.__dict__.get(_SILU_DONE):
            n.__dict__[_SILU_DONE] = True
            done += 1
    if type(getattr(owner, act_name)) is nn.SiLU:
        setattr(owner, act_name, _SiLUUnlessFused())
    return done


def restore_autograd(model: nn.Module) -> None:
    """Undo `lean_autograd`: stock forwards and SiLU modules again."""
    for m in model.modules():
        m.__dict__.pop(_SILU_DONE, None)
        if m.__dict__.pop(_PATCHED, None):
            del m.forward
        for act_name in ("nonlinearity", "conv_act"):
            if type(getattr(m, act_name, None)) is _SiLUUnlessFused:
                setattr(m, act_name, nn.SiLU())
