"""Frozen CPU convolutions whose weights are reordered for oneDNN once, not at every call.

PyTorch's CPU convolution hands oneDNN each weight in PyTorch's plain layout, and oneDNN reorders
it into its blocked layout at every call, and once more for the input gradient in backward. Where a
weight is much larger than the activation it meets (the 1280-channel layers of an SD U-Net at batch
1, 8x8 or 4x4 latents), that reorder costs more than the convolution itself. A frozen weight does not
change, so here it is reordered once per input shape (`mkldnn._reorder_convolution_weight`) and the
convolution runs on the reordered copy (`mkldnn._convolution_pointwise`, the op PyTorch's own
compiler uses for frozen inference on a CPU). For backward, the input gradient of a stride-1
convolution is a convolution of the output gradient with the weight transposed (in and out channels)
and flipped, padded by `k - 1 - padding`; that weight is reordered once the same way. The weight
gradient is never computed (the weight is frozen), and nothing is kept for backward but the module.

Which calls take this path is decided per call, so a layer that is unfrozen later trains as before:
a frozen `nn.Conv2d` (zero padding, one group), fp32 on a CPU outside autocast, with oneDNN enabled,
whose weight has at least `MIN_WEIGHT_RATIO` times the elements of the output. Below that ratio
oneDNN's own reorder is cheap next to the convolution and the stock path is as fast or faster
(benchmarks/README.md, "Reordered frozen convolutions"). Each layer keeps one reordered weight per
direction (the last input shape it saw); a new shape reorders again, which is what the stock path
does at every call.

Values match the stock convolution to float rounding (oneDNN sums in another order), not bit for bit.
The cost is memory: one more copy of each packed weight, two for layers that also run backward.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import SceditError

# Pack when weight elements >= this x output elements; see the module docstring.
MIN_WEIGHT_RATIO = 16

_STATE = "_scedit_prepack"


@dataclass
class _Packs:
    """One layer's reordered weights, each with the key it was made for."""

    prior: object  # the instance forward this patch replaced (e.g. lean's), or None for the class's
    forward: dict = field(default_factory=dict)  # {"key": ..., "weight": ...}
    backward: dict = field(default_factory=dict)


def _reordered(slot: dict, key: tuple, make) -> torch.Tensor:
    if slot.get("key") != key:
        slot.clear()  # free the old copy before making the new one
        slot["weight"], slot["key"] = make(), key
    return slot["weight"]


def _weight_key(weight: torch.Tensor, shape) -> tuple:
    # data_ptr and _version change when the weight is replaced or written in place (load_state_dict).
    return tuple(shape), weight.data_ptr(), weight._version, weight.dtype


def conv_on_reordered(x, packed, bias, padding, stride, dilation):
    """conv2d of a contiguous NCHW `x` with a weight from `mkldnn._reorder_convolution_weight`; NCHW out."""
    out = torch.ops.mkldnn._convolution_pointwise(x, packed, bias, padding, stride, dilation, 1, "none", [], "")
    return out.contiguous()  # oneDNN answers channels-last; the stock path and the next layers expect NCHW


def input_grad_padding(m: nn.Conv2d) -> list[int]:
    """Padding of the transposed-weight convolution that gives a stride-1 layer's input gradient."""
    return [k - 1 - p for k, p in zip(m.kernel_size, m.padding)]


def reorder_for_forward(m: nn.Conv2d, input_shape) -> torch.Tensor:
    """`m`'s weight reordered for inputs of `input_shape` (what `conv_on_reordered` takes)."""
    return torch.ops.mkldnn._reorder_convolution_weight(m.weight.detach(), list(m.padding), list(m.stride),
                                                        list(m.dilation), 1, list(input_shape))


def reorder_for_input_grad(m: nn.Conv2d, grad_shape) -> torch.Tensor:
    """The transposed, flipped weight of stride-1 `m`, reordered for output gradients of `grad_shape`."""
    return torch.ops.mkldnn._reorder_convolution_weight(m.weight.detach().transpose(0, 1).flip(2, 3).contiguous(),
                                                        input_grad_padding(m), [1, 1], [1, 1], 1, list(grad_shape))


def _packed_forward(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    packs: _Packs = m.__dict__[_STATE]
    weight = _reordered(packs.forward, _weight_key(m.weight, x.shape), lambda: reorder_for_forward(m, x.shape))
    return conv_on_reordered(x, weight, m.bias, list(m.padding), list(m.stride), list(m.dilation))


class _PackedFrozenConv2d(torch.autograd.Function):
    """A frozen stride-1 conv2d on reordered weights; backward gives the input gradient only."""

    @staticmethod
    def forward(ctx, x, m):
        ctx.module = m
        return _packed_forward(m, x)

    @staticmethod
    def backward(ctx, grad):
        m = ctx.module
        grad = grad.contiguous()
        packs: _Packs = m.__dict__[_STATE]
        weight = _reordered(packs.backward, _weight_key(m.weight, grad.shape),
                            lambda: reorder_for_input_grad(m, grad.shape))
        return conv_on_reordered(grad, weight, None, input_grad_padding(m), [1, 1], [1, 1]), None


def _takes_packed_path(m: nn.Conv2d, x: torch.Tensor, needs_grad: bool) -> bool:
    w = m.weight
    if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32 or x.dim() != 4
            or w.requires_grad or (m.bias is not None and m.bias.requires_grad)
            or torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.enabled):
        return False
    if needs_grad and (m.stride != (1, 1) or m.dilation != (1, 1) or any(p < 0 for p in input_grad_padding(m))):
        return False  # the transposed-weight identity above holds for stride 1 only
    out_h = (x.shape[2] + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1
    out_w = (x.shape[3] + 2 * m.padding[1] - m.dilation[1] * (m.kernel_size[1] - 1) - 1) // m.stride[1] + 1
    return w.numel() >= MIN_WEIGHT_RATIO * x.shape[0] * m.out_channels * out_h * out_w


def _prepacked_conv(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    if _takes_packed_path(self, x, needs_grad):
        x = x.contiguous()
        return _PackedFrozenConv2d.apply(x, self) if needs_grad else _packed_forward(self, x)
    prior = self.__dict__[_STATE].prior
    return prior(x) if prior is not None else nn.Conv2d.forward(self, x)


def available() -> bool:
    """Whether this PyTorch build has the oneDNN ops (every official x86 and ARM CPU build does)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def resolve_prepack(setting: bool | str) -> bool:
    """Whether `train.prepack` / `--prepack` value `setting` (true / false / "auto") turns it on.
    "auto" is on where the ops exist; each call still takes the stock path unless the rule above holds."""
    if setting is True and not available():
        raise SceditError("train.prepack = true: this PyTorch build has no oneDNN (mkldnn) CPU ops; "
                          "set train.prepack = \"auto\" or false")
    return available() if setting == "auto" else bool(setting)


def prepack_convs(model: nn.Module) -> int:
    """Route the plain `nn.Conv2d` layers of `model` through the reordered-weight path (decided per
    call); how many layers were newly patched. Idempotent; `restore_convs` undoes it."""
    done = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and _STATE not in m.__dict__ and m.groups == 1 and m.padding_mode == "zeros" \
                and isinstance(m.padding, tuple):
            m.__dict__[_STATE] = _Packs(prior=m.__dict__.get("forward"))
            m.forward = types.MethodType(_prepacked_conv, m)
            done += 1
    return done


def reordered_nbytes(modules) -> int:
    """Bytes of the reordered weight copies `modules` hold now (memory the stock path does not use)."""
    total = 0
    for model in modules:
        for m in model.modules():
            packs = m.__dict__.get(_STATE)
            for slot in (packs.forward, packs.backward) if packs is not None else ():
                if "weight" in slot:
                    total += slot["weight"].numel() * slot["weight"].element_size()
    return total


def restore_convs(model: nn.Module) -> None:
    """Undo `prepack_convs`: the forward each layer had before, and the reordered copies freed."""
    for m in model.modules():
        packs = m.__dict__.pop(_STATE, None)
        if packs is None:
            continue
        if packs.prior is not None:
            m.forward = packs.prior
        else:
            del m.forward
