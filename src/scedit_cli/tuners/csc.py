"""CSC-Tuner (paper Eq. 6-7): condition-aware tuners fed by a dense hint cascade.

A condition image (B, 3, H, W) is encoded once per sample: the pre-hint encoder
brings it to the latent size, then one `SiLU -> conv` level per tuned skip
produces `c_j` with exactly that skip's shape. The tuner edit on skip j is
`T_j(x + s·c_j) + s·c_j` (s: the condition scale); with several conditions the
editor sums these with weights alpha (Eq. 7).

The hint features depend on neither the latent nor the timestep, so they are
computed once by `set_condition` and reused by every denoising step and by both
halves of classifier-free guidance (the official code recomputes them per step).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..errors import SceditError
from .base import SkipTuner, run_op
from .config import PRE_HINT_CHANNELS, CSCTunerConfig, pre_hint_channels
from .layout import SkipLayout
from .fused import Part
from .ops import build_op, linear_params

# The pre-hint convs that halve the resolution (`config.PRE_HINT_CHANNELS`: those that widen); a
# smaller VAE factor strides fewer of them.
_STRIDE_POSITIONS = (2, 4, 6)

# Init gain of the pre-hint convs. PyTorch's default conv init shrinks the
# signal ~3x per layer, so after 7 convs the condition-dependent part of the
# features is ~1e-4 of the input and a CSC-Tuner needs many thousand steps to
# notice its condition at all. N(0, (gain / sqrt(fan_in))^2) with zero biases
# keeps the scale through SiLU (edge maps in, features of about the same scale out).
# Parameter counts are unchanged, and the zero-initialised dense convs keep a
# fresh tuner the identity.
PRE_HINT_INIT_GAIN = 1.7


def pre_hint_encoder(in_channels: int, downscale: int, channels: tuple[int, ...] = PRE_HINT_CHANNELS) -> nn.Sequential:
    n_strided = int(math.log2(downscale))
    strided = set(_STRIDE_POSITIONS[:n_strided])
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c_out in enumerate(channels):
        if i:
            layers.append(nn.SiLU())
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, stride=2 if i in strided else 1)
        nn.init.normal_(conv.weight, 0.0, PRE_HINT_INIT_GAIN / math.sqrt(c_in * 9))
        nn.init.zeros_(conv.bias)
        layers.append(conv)
        c_in = c_out
    return nn.Sequential(*layers)


class HintEncoder(nn.Module):
    """Pre-hint encoder + dense hint cascade; output i has tuned skip i's shape."""

    def __init__(self, config: CSCTunerConfig, layout: SkipLayout, skips: list[int]):
        super().__init__()
        self.skips = skips  # encoder indices, ascending
        channels = pre_hint_channels(config.pre_hint_dim_ratio, config.pre_hint_out_channels)
        self.pre_hint_blocks = pre_hint_encoder(config.in_channels, config.hint_downscale, channels)
        k = config.hint_kernel
        levels = []
        c_in, scale = channels[-1], 1
        for s in skips:
            stride = layout.downscale[s] // scale
            conv = nn.Conv2d(c_in, layout.channels[s], k, stride=stride, padding=k // 2)
            nn.init.zeros_(conv.weight)  # zero convolution: no effect before training
            nn.init.zeros_(conv.bias)
            levels.append(nn.Sequential(nn.SiLU(), conv))
            c_in, scale = layout.channels[s], layout.downscale[s]
        self.dense_hint_blocks = nn.ModuleList(levels)

    def forward(self, cond: torch.Tensor) -> dict[int, torch.Tensor]:
        dtype = self.pre_hint_blocks[0].weight.dtype
        h = self.pre_hint_blocks(cond.to(dtype))
        out = {}
        for s, block in zip(self.skips, self.dense_hint_blocks):
            h = block(h)
            out[s] = h
        return out


class CSCTuner(SkipTuner):
    method: ClassVar[str] = "csc"

    def __init__(self, config: CSCTunerConfig, layout: SkipLayout):
        super().__init__(config, layout)
        self.hint = HintEncoder(config, layout, self.tuned_encoder_skips())
        self.tuners = nn.ModuleDict(
            {
                str(j): build_op(config.op, layout.channels[enc], config.ratio)
                for enc, j in sorted(self.encoder_to_decoder.items(), key=lambda kv: kv[1])
            }
        )
        self.scale = 1.0
        self._hints: dict[int, torch.Tensor] | None = None

    def encode_condition(self, cond: torch.Tensor) -> dict[int, torch.Tensor]:
        """Hint features for a batch of condition images (B, C, H, W) in [-1, 1] or [0, 1]."""
        if cond.ndim != 4 or cond.shape[1] != self.config.in_channels:
            raise SceditError(
                f"{self.config.condition} condition must be a (B, {self.config.in_channels}, H, W) tensor, "
                f"got shape {tuple(cond.shape)}"
            )
        return self.hint(cond)

    def set_condition(self, cond: torch.Tensor | None) -> None:
        """Encode `cond` once; every later U-Net call reuses the features."""
        self.set_hints(None if cond is None else self.encode_condition(cond))

    def set_hints(self, hints: dict[int, torch.Tensor] | None) -> None:
        """Use precomputed hint features (from `encode_condition`)."""
        self._hints = hints

    def _current_hints(self) -> dict[int, torch.Tensor]:
        if self._hints is None:
            raise SceditError(
                f"CSC-Tuner for {self.config.condition!r} has no condition image: call set_condition() "
                "(or pass --control) before running the U-Net"
            )
        return self._hints

    def delta(self, skip, x, hint=None):
        """The edit on skip `skip` (encoder index): `T(x + s·c) + s·c` with `c` = `hint` (features from
        `encode_condition`) or, where None, those `set_condition` made."""
        op = self.op_for(skip)
        if op is None:
            return None
        c = self._scaled_hint(skip, x, self._current_hints()[skip] if hint is None else hint)
        return run_op(op, x + c) + c

    def part(self, skip, x, weight, hint=None):
        params = linear_params(self.op_for(skip), x.dtype)
        if params is None:
            return None
        return Part(params, weight, self, skip, self._current_hints()[skip] if hint is None else hint, self.scale)

    def fused_shift(self, skip: int, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """`s·c` as (B, C, P) for skip `x`: what the OP's input gains, in the form `fused` needs."""
        b, ch = x.shape[:2]
        return self._scaled_hint(skip, x, c).reshape(b, ch, -1)

    def _scaled_hint(self, skip: int, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """`s·c` in x's dtype, tiled to x's batch, after checking that it fits skip `skip`."""
        if c.shape[0] != x.shape[0]:
            # Classifier-free guidance runs [uncond, cond] in one batch: tile the features.
            if x.shape[0] % c.shape[0]:
                raise SceditError(
                    f"condition batch {c.shape[0]} does not divide the U-Net batch {x.shape[0]}"
                )
            c = c.repeat(x.shape[0] // c.shape[0], *([1] * (c.ndim - 1)))
        if c.shape[-2:] != x.shape[-2:]:
            raise SceditError(
                f"condition features {tuple(c.shape[-2:])} do not match skip {skip} of size {tuple(x.shape[-2:])}: "
                "the condition image must have the same pixel size as the generated image"
            )
        return self.scale * c.to(x.dtype)
