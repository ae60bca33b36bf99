"""What every skip tuner shares: its config, the layout it was built for, and `delta`."""

from __future__ import annotations

import copy as copylib
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from ..errors import SceditError
from ..lean import amp_dtype
from .layout import SkipLayout
from .ops import OPS


@dataclass
class TunerConfig:
    """Hyperparameters shared by SC- and CSC-Tuners.

    `skips` are paper indices j (the j-th decoder layer, fed by encoder skip
    N-1-j); None tunes every skip.
    """

    method: ClassVar[str] = ""
    ratio: float = 1.0
    op: str = "linear"
    skips: list[int] | None = None

    def validate(self, layout: SkipLayout) -> None:
        if self.ratio <= 0:
            raise SceditError(f"tuner ratio must be > 0, got {self.ratio}")
        if self.op not in OPS:
            raise SceditError(f"unknown tuner op {self.op!r}; choose one of {', '.join(OPS)}")
        for j in self.skips or []:
            if not 0 <= j < layout.num_skips:
                raise SceditError(
                    f"skip index {j} out of range: this U-Net has {layout.num_skips} skips (0..{layout.num_skips - 1})"
                )

    def decoder_indices(self, layout: SkipLayout) -> list[int]:
        return sorted(set(self.skips)) if self.skips is not None else list(range(layout.num_skips))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TunerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SceditError(
                f"unknown {cls.method} tuner setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)


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
