"""Transformer feed-forwards (GEGLU) that keep their projection only, or their input and recompute the rest.

A feed-forward is `W2 · (a * gelu(g)) + b2` with `(a, g) = (W1 · x + b1).chunk(2)`: its projection `h` is
8C wide, the product `a * gelu(g)` 4C, the output C. Two forms:

- Any GEGLU (`_GegluProduct`): keeps `h` (stock autograd also keeps a copy of one half and the GELU
  output) and recomputes the GELU in backward.
- A frozen feed-forward (both linears without trainable weights: SC / CSC-Tuners, ControlNet's base,
  every frozen base; not LoRA's, whose linears carry adapters) runs whole in one function
  (`_FrozenFeedForward`): the same `h` kept, but the product and, in backward, the gradients of the
  product and of `h` exist one batch slice at a time, never for the whole batch. The GEGLU alone holds
  `h` and the product at once in forward (12C), the product's and `h`'s gradients in backward (12C); at
  batch 32 and 64x64 tokens that was the largest transient of SCEdit's step, on top of its peak.

With `recompute_feed_forward` a feed-forward keeps only its input (C): the frozen form recomputes `h`
slice by slice in backward (it never exists whole there), others rerun the GEGLU under
`torch.utils.checkpoint`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .common import amp_dtype, batch_slices, row_slices


def _geglu_backward_into(grad_h: torch.Tensor, grad: torch.Tensor, h: torch.Tensor, approximate: str) -> None:
    """Write into `grad_h` the gradient of `a * gelu(g)` ((a, g) = h.chunk(2, -1)) for output gradient
    `grad`, as stock autograd computes it."""
    a, g = h.chunk(2, dim=-1)
    grad_a, grad_g = grad_h.chunk(2, dim=-1)
    torch.mul(grad, F.gelu(g, approximate=approximate), out=grad_a)
    grad_g.copy_(torch.ops.aten.gelu_backward(grad * a, g, approximate=approximate))


def _geglu_product(h: torch.Tensor, approximate: str) -> torch.Tensor:
    """a * gelu(g) with one temporary: the GELU output, multiplied in place (the same values: `*` commutes)."""
    a, g = h.chunk(2, dim=-1)
    return F.gelu(g, approximate=approximate).mul_(a)


class _GegluProduct(torch.autograd.Function):
    """a * gelu(g) for (a, g) = h.chunk(2, -1), keeping only h for backward."""

    @staticmethod
    def forward(ctx, h, approximate):
        ctx.save_for_backward(h)
        ctx.approximate = approximate
        return _geglu_product(h, approximate)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        grad_h = torch.empty_like(h)
        for rows in batch_slices(h):
            _geglu_backward_into(grad_h[rows], grad[rows], h[rows], ctx.approximate)
        return grad_h, None


def lean_geglu(self, hidden_states, *args, **kwargs):
    h = self.proj(hidden_states)
    if not (torch.is_grad_enabled() and h.requires_grad) or h.device.type == "mps":
        a, g = h.chunk(2, dim=-1)
        return a * self.gelu(g)
    return _GegluProduct.apply(h, "none")


def recomputed_geglu(self, hidden_states, *args, **kwargs):
    if torch.is_grad_enabled() and hidden_states.requires_grad:
        return torch.utils.checkpoint.checkpoint(lean_geglu, self, hidden_states, use_reentrant=False)
    return lean_geglu(self, hidden_states)


def _into_slices(out: torch.Tensor | None, rows: slice, whole: bool, part: torch.Tensor) -> torch.Tensor:
    """`part` as the whole result (one slice) or copied into `out[rows]`."""
    if whole:
        return part
    out[rows] = part
    return out


class _FrozenFeedForward(torch.autograd.Function):
    """`W2 · geglu(W1 · x + b1) + b2` with frozen weights, batch slice by batch slice; keeps `h = W1·x + b1`
    (or, with `recompute`, `x`) for backward, which returns the input gradient only."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, recompute):
        h = None if recompute else F.linear(x, w1, b1)
        slices = row_slices((*x.shape[:-1], w1.shape[0]))
        out = None if len(slices) == 1 else x.new_empty((*x.shape[:-1], w2.shape[0]))
        for rows in slices:
            h_rows = F.linear(x[rows], w1, b1) if recompute else h[rows]
            out = _into_slices(out, rows, len(slices) == 1, F.linear(_geglu_product(h_rows, "none"), w2, b2))
        ctx.save_for_backward(x if recompute else h, w1, b1, w2)
        ctx.recompute = recompute
        return out

    @staticmethod
    def backward(ctx, grad):
        kept, w1, b1, w2 = ctx.saved_tensors
        slices = row_slices((*kept.shape[:-1], w1.shape[0]))
        grad_x = None if len(slices) == 1 else grad.new_empty((*grad.shape[:-1], w1.shape[1]))
        for rows in slices:
            h = F.linear(kept[rows], w1, b1) if ctx.recompute else kept[rows]
            grad_h = torch.empty_like(h)
            _geglu_backward_into(grad_h, grad[rows].matmul(w2), h, "none")
            del h
            grad_x = _into_slices(grad_x, rows, len(slices) == 1, grad_h.matmul(w1))
        return grad_x, None, None, None, None, None


def frozen_geglu_linears(ff: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """The (projection, output) linears of a diffusers GEGLU `FeedForward` whose other layers are no-ops
    in training (dropout 0), else None. Their weights may still be trainable: checked per call."""
    from diffusers.models.activations import GEGLU

    net = getattr(ff, "net", None)
    if not isinstance(net, nn.ModuleList) or len(net) not in (3, 4):
        return None
    geglu, *dropouts = net[0], net[1], *net[3:]
    out = net[2]
    if type(geglu) is not GEGLU or type(getattr(geglu, "proj", None)) is not nn.Linear or type(out) is not nn.Linear:
        return None
    if not all(type(d) is nn.Dropout and d.p == 0.0 for d in dropouts):
        return None
    return geglu.proj, out


def _plain_and_frozen(*layers: nn.Module) -> bool:
    """Still plain `nn.Linear`s (an adapter injected after patching, e.g. peft's, must run as itself)
    without trainable parameters."""
    return all(type(layer) is nn.Linear for layer in layers) and not any(
        p.requires_grad for layer in layers for p in layer.parameters())


def fused_feed_forward(self, hidden_states, *args, recompute: bool = False, **kwargs):
    proj, out = self.net[0].proj, self.net[2]
    if (torch.is_grad_enabled() and hidden_states.requires_grad and hidden_states.device.type != "mps"
            and _plain_and_frozen(proj, out)):
        dtype = amp_dtype(hidden_states.device.type, hidden_states.dtype)
        params = [None if t is None else t.to(dtype) for t in (proj.weight, proj.bias, out.weight, out.bias)]
        return _FrozenFeedForward.apply(hidden_states.to(dtype), *params, recompute)
    # Trainable or adapted linears (full fine-tuning, LoRA) or no autograd: the module's own forward (its
    # GEGLU itself patched).
    return type(self).forward(self, hidden_states, *args, **kwargs)


def fused_recomputed_feed_forward(self, hidden_states, *args, **kwargs):
    return fused_feed_forward(self, hidden_states, *args, recompute=True, **kwargs)
