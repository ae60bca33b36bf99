"""What every skip tuner shares: its config (`config.py`), the layout it was built for, and `delta`."""

from __future__ import annotations

import copy as copylib
from typing import ClassVar

import torch
from torch import nn

from ..lean import amp_dtype
from .layout import SkipLayout
from .config import TunerConfig


class SkipTuner(nn.Module):
    """Base of SC- and CSC-Tuners: one OP per tuned skip, keyed by paper index j."""

    config: TunerConfig
    layout: SkipLayout
    method: ClassVar[str] = ""

    def __init__(self, config: TunerConfig, layout: SkipLayout):
        super().__init__()
        config.validate(layout)
        self.config = config
        self.layout = layout
        # encoder skip index -> paper (decoder) index j, for the tuned skips only.
        self.encoder_to_decoder = {layout.decoder_to_encoder(j): j for j in config.decoder_indices(layout)}
        # Where a loaded tuner came from: its file's metadata (base_model, ...) and path; empty when built here.
        self.file_meta: dict = {}
        self.source_path: str | None = None

    def tuned_encoder_skips(self) -> list[int]:
        return sorted(self.encoder_to_decoder)

    def tunes(self, skip: int) -> bool:
        return skip in self.encoder_to_decoder

    def op_for(self, skip: int) -> nn.Module | None:
        """The OP `T_j` on skip `skip` (encoder index), or None where untuned."""
        j = self.encoder_to_decoder.get(skip)
        return None if j is None else self.tuners[str(j)]

    def delta(self, skip: int, x: torch.Tensor, hint: torch.Tensor | None = None) -> torch.Tensor | None:
        """The edit to add to skip `skip` (encoder index), or None where untuned. `hint`: a CSC-Tuner's
        features for this skip, where the caller keeps them (ComfyUI); others ignore it."""
        raise NotImplementedError

    def part(self, skip: int, x: torch.Tensor, weight: float, hint: torch.Tensor | None = None):
        """This tuner's share of the sampling edit on tuned skip `skip` (a `fused.Part`; called only when
        sampling, `fused.sampling`), or None where it adds `delta` instead (an OP `fused` cannot run, OPs
        in another dtype)."""
        return None

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def ops_in(self, dtype: torch.dtype, copy: bool = True) -> "SkipTuner":
        """This tuner with its per-skip OPs in `dtype`, for inference beside a base in that precision.

        Run every step, the OPs in fp32 beside an fp16 base cost casts and fp32 matmuls on each skip.
        A CSC-Tuner's hint encoder, run once per
        image, keeps its dtype. With `copy` (the default) the tuner itself is left as it was, so fp32
        weights that may still be trained are never rounded.
        """
        if all(p.dtype == dtype for p in self.tuners.parameters()):
            return self
        tuner = copylib.deepcopy(self) if copy else self
        tuner.tuners.to(dtype)
        return tuner


def run_op(op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a tuner OP in its own dtype (tuners stay fp32 beside a half-precision base), or in
    autocast's, where the OP's layers would cast an fp32 copy of `x` straight back."""
    dtype = amp_dtype(x.device.type, next(op.parameters()).dtype)
    return op(x.to(dtype)).to(x.dtype)
