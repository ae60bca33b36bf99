"""Autograd savings for frozen convolutions.

PyTorch's convolution backward keeps the layer's *input* for the weight
gradient even when the weight is frozen. In SCEdit training every convolution
of the base is frozen, and the decoder's conv inputs are a large share of the
activations autograd keeps. `lean_frozen_convs` makes each frozen Conv2d save
only its weight (needed for the input gradient), so gradients are identical
and the activation memory of those layers disappears. It applies to every
method alike (LoRA's frozen convs too), so comparisons stay fair.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

_PATCHED = "_scedit_lean_forward"


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


def _lean_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
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


def lean_frozen_convs(model: nn.Module) -> int:
    """Route every plain `nn.Conv2d` of `model` through the lean frozen path; returns how many.

    The check for "frozen" happens at each call, so a layer that is later
    unfrozen (full fine-tuning, ControlNet copies) trains exactly as before.
    """
    n = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and _PATCHED not in m.__dict__:
            m.forward = types.MethodType(_lean_forward, m)
            m.__dict__[_PATCHED] = True
            n += 1
    return n


def restore_convs(model: nn.Module) -> None:
    for m in model.modules():
        if m.__dict__.pop(_PATCHED, None):
            del m.forward
