"""Convolutions of a frozen base that keep no input for backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import amp_dtype


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


def lean_conv(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
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
