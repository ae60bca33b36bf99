"""Tuner OPs: the small per-skip networks `T_j` of SC- and CSC-Tuners.

Each OP maps a (B, C, H, W) skip feature to a tensor of the same shape. The last
layer starts at zero, so `x + op(x)` is exactly `x` before training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..lean import amp_dtype


def _zero_(layer: nn.Module) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class LinearOp(nn.Module):
    """`W_up · GELU(W_down · x)` over channels (the paper's SC-Tuner, Table 5c "Linear").

    Applied per pixel as `addmm` on the skip folded to (C, B·H·W) (a view at batch 1), so no
    channels-last copies; on a CPU the 1x1 convolutions of the same products took slower paths. Sampling
    (no autograd) takes `fused.edit` instead: batched products, no folded copies, tuners merged. Parameters
    `2·C·d + d + C`. Names `ln1` / `ln2` follow the official checkpoints (down / up projection) and stay
    `nn.Linear`, so their weights load unchanged.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.ln1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.ln2 = nn.Linear(hidden, channels)
        _zero_(self.ln2)

    def forward(self, x):
        # Under autocast, compute in its dtype as nn.Linear would; the casts stay on autograd's graph.
        dtype = amp_dtype(x.device.type, self.ln1.weight.dtype)
        x = x.to(dtype)
        w1, b1 = self.ln1.weight.to(dtype), self.ln1.bias.to(dtype)
        w2, b2 = self.ln2.weight.to(dtype), self.ln2.bias.to(dtype)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, b1, w2, b2)):
            return _PixelMLP.apply(x, w1, b1, w2, b2)
        return _unfold(_pixel_mlp(_fold(x), w1, b1, w2, b2)[1], x.shape)


def linear_params(op: nn.Module, dtype: torch.dtype) -> tuple | None:
    """A Linear OP's `(w1, b1, w2, b2)` where they are in `dtype`, for the sampling edit (`fused.edit`);
    None for other OPs and dtypes. Read from the modules' dicts: this runs at every sampling step."""
    if not isinstance(op, LinearOp):
        return None
    down, up = op._modules["ln1"]._parameters, op._modules["ln2"]._parameters
    w1 = down["weight"]
    return (w1, down["bias"], up["weight"], up["bias"]) if w1.dtype == dtype else None


def _fold(x):
    """(B, C, H, W) -> (C, B·H·W): one pixel per column; a view at batch 1."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _unfold(y, shape):
    """(C, B·H·W) -> a contiguous (B, C, H, W), the inverse of `_fold`."""
    b, _, h, w = shape
    return y.view(y.shape[0], b, h, w).transpose(0, 1).contiguous()


def _hidden(x2, w1, b1):
    """The pre-GELU hidden activation (d, B·H·W) of a folded input."""
    return torch.addmm(b1[:, None], w1, x2)


def _pixel_mlp(x2, w1, b1, w2, b2):
    """(hidden, output) of `w2 · gelu(w1 · x + b1) + b2` per column of the folded input."""
    h = _hidden(x2, w1, b1)
    return h, torch.addmm(b2[:, None], w2, F.gelu(h))


class _PixelMLP(torch.autograd.Function):
    """`w2 · gelu(w1 · x + b1) + b2` per pixel, keeping only x (and the weights) for backward.

    Autograd would keep the hidden activation twice (before and after GELU) besides x, 3x the skip's
    size in all; the backward instead recomputes the first product, a C x d matmul per pixel.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        ctx.save_for_backward(x, w1, b1, w2)  # x itself: a folded copy (batch > 1) would be a new storage
        return _unfold(_pixel_mlp(_fold(x), w1, b1, w2, b2)[1], x.shape)

    @staticmethod
    def backward(ctx, grad):
        x, w1, b1, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        x2, g = _fold(x), _fold(grad)
        h = _hidden(x2, w1, b1)
        g_w2 = torch.mm(g, F.gelu(h).t()) if need[3] else None
        g_b2 = g.sum(1) if need[4] else None
        g_h = torch.ops.aten.gelu_backward(torch.mm(w2.t(), g), h)
        del h
        g_w1 = torch.mm(g_h, x2.t()) if need[1] else None
        g_b1 = g_h.sum(1) if need[2] else None
        g_x = _unfold(torch.mm(w1.t(), g_h), x.shape) if need[0] else None
        return g_x, g_w1, g_b1, g_w2, g_b2


class ConvOp(nn.Module):
    """`conv_up(GELU(conv_down(x)))` with k x k convolutions (Table 5c "Conv", k=3).

    k=1 is the 1x1-conv form of `LinearOp` (same parameters, same function).
    """

    def __init__(self, channels: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, kernel, padding=kernel // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)
        _zero_(self.conv2)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


# Keyed by `config.OP_NAMES`, which recipes are checked against without torch (a test keeps them equal).
OPS = {
    "linear": lambda c, d: LinearOp(c, d),
    "conv1x1": lambda c, d: ConvOp(c, d, kernel=1),
    "conv3x3": lambda c, d: ConvOp(c, d, kernel=3),
}


def build_op(kind: str, channels: int, ratio: float):
    if kind not in OPS:
        raise ValueError(f"unknown tuner op {kind!r}; choose one of {', '.join(OPS)}")
    hidden = max(1, int(channels // ratio))
    return OPS[kind](channels, hidden)
