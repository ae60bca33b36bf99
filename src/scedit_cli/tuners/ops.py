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

    Applied per pixel: as 1x1 convolutions on the (B, C, H, W) skip itself, so no channels-last
    copies. Parameters `2·C·d + d + C`. Names `ln1` / `ln2` follow the official checkpoints (down /
    up projection) and stay `nn.Linear`, so their weights load unchanged.
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
        w1, b1 = self.ln1.weight.to(dtype)[:, :, None, None], self.ln1.bias.to(dtype)
        w2, b2 = self.ln2.weight.to(dtype)[:, :, None, None], self.ln2.bias.to(dtype)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, b1, w2, b2)):
            return _PixelMLP.apply(x, w1, b1, w2, b2)
        return _pixel_mlp(x, w1, b1, w2, b2)


def _pixel_mlp(x, w1, b1, w2, b2):
    return F.conv2d(F.gelu(F.conv2d(x, w1, b1)), w2, b2)


class _PixelMLP(torch.autograd.Function):
    """conv1x1(gelu(conv1x1(x, w1, b1)), w2, b2), keeping only x (and the weights) for backward.

    Autograd would keep the hidden activation twice (before and after GELU) besides x, 3x the skip's
    size in all; the backward instead reruns the first 1x1 convolution, a C x d matmul per pixel.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        ctx.save_for_backward(x, w1, b1, w2)
        return _pixel_mlp(x, w1, b1, w2, b2)

    @staticmethod
    def backward(ctx, grad):
        x, w1, b1, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        h = F.conv2d(x, w1, b1)
        g_act, g_w2, g_b2 = _conv1x1_backward(grad, F.gelu(h), w2, [True, need[3], need[4]])
        g_h = torch.ops.aten.gelu_backward(g_act, h)
        del g_act, h
        g_x, g_w1, g_b1 = _conv1x1_backward(g_h, x, w1, [need[0], need[1], need[2]])
        return g_x, g_w1, g_b1, g_w2, g_b2


def _conv1x1_backward(grad, inp, weight, mask):
    """(input, weight, bias) gradients of a bias-carrying 1x1 convolution; None where not asked."""
    return torch.ops.aten.convolution_backward(
        grad, inp, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)


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
