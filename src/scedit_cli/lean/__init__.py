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
  recomputes the GELU in backward. Where both of a feed-forward's linears are
  frozen, the whole feed-forward is one function (`feedforward.py`) that keeps
  the same and works through the batch in slices, forward and backward.

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
only its input and runs again in backward (`torch.utils.checkpoint`; a frozen
feed-forward recomputes its projection slice by slice instead). Its
8C-wide projection is the largest single activation of a transformer block; the
recompute costs that one projection matmul per block (the feed-forward's output
projection is not rerun). Unlike diffusers' `enable_gradient_checkpointing`
(whole resnets and transformers), attention and convolutions are not recomputed.
"""

from __future__ import annotations

import types

from torch import nn

from .common import BACKWARD_SLICE_ELEMENTS, PATCHED, amp_dtype
from .conv import lean_conv
from .feedforward import (frozen_geglu_linears, fused_feed_forward, fused_recomputed_feed_forward, lean_geglu,
                          recomputed_geglu)
from .norms import SILU_DONE, SiLUUnlessFused, lean_group_norm, lean_layer_norm

__all__ = ["BACKWARD_SLICE_ELEMENTS", "amp_dtype", "lean_autograd", "resolve_lean", "restore_autograd"]


def _patch(module: nn.Module, forward) -> bool:
    if PATCHED in module.__dict__:
        return False
    module.forward = types.MethodType(forward, module)
    module.__dict__[PATCHED] = True
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
    """Apply every exact saving to `model` (convs, norms, fused resnet norm+SiLU, GEGLU, frozen
    feed-forwards in one function) and, if asked, the feed-forward recompute; counts per kind.
    `exact=False`: only the feed-forward recompute (if asked). Idempotent; `restore_autograd` undoes it."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.resnet import ResnetBlock2D

    counts = {"conv": 0, "norm": 0, "norm_silu": 0, "geglu": 0, "frozen_ff": 0, "feed_forward": 0}
    if not exact:
        if recompute_feed_forward:
            for m in model.modules():
                if type(m) is GEGLU and getattr(m, "proj", None) is not None:
                    done = _patch(m, recomputed_geglu)
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
            counts["conv"] += _patch(m, lean_conv)
        elif type(m) is nn.GroupNorm and m.affine:
            counts["norm"] += _patch(m, lean_group_norm)
        elif type(m) is nn.LayerNorm and len(m.normalized_shape) == 1:
            counts["norm"] += _patch(m, lean_layer_norm)
        elif type(m) is GEGLU and getattr(m, "proj", None) is not None:
            done = _patch(m, recomputed_geglu if recompute_feed_forward else lean_geglu)
            counts["geglu"] += done
            counts["feed_forward"] += done and recompute_feed_forward
        elif frozen_geglu_linears(m) is not None:
            # Used while both linears are frozen (checked per call); the GEGLU above serves otherwise.
            counts["frozen_ff"] += _patch(m, fused_recomputed_feed_forward if recompute_feed_forward
                                          else fused_feed_forward)
    return counts


def _fuse_silu(owner: nn.Module, norms: list[nn.Module], act_name: str) -> int:
    """Let `norms` apply the SiLU that `owner.<act_name>` applies right after them; how many newly."""
    if type(getattr(owner, act_name, None)) not in (nn.SiLU, SiLUUnlessFused):
        return 0
    if not all(type(n) is nn.GroupNorm for n in norms):
        return 0
    done = 0
    for n in norms:
        if not n.__dict__.get(SILU_DONE):
            n.__dict__[SILU_DONE] = True
            done += 1
    if type(getattr(owner, act_name)) is nn.SiLU:
        setattr(owner, act_name, SiLUUnlessFused())
    return done


def restore_autograd(model: nn.Module) -> None:
    """Undo `lean_autograd`: stock forwards and SiLU modules again."""
    for m in model.modules():
        m.__dict__.pop(SILU_DONE, None)
        if m.__dict__.pop(PATCHED, None):
            del m.forward
        for act_name in ("nonlinearity", "conv_act"):
            if type(getattr(m, act_name, None)) is SiLUUnlessFused:
                setattr(m, act_name, nn.SiLU())
