"""SC-Tuner (paper Eq. 5): `O_j(x) = x + T_j(x)` on each tuned skip connection."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from .base import SkipTuner, run_op
from .config import SCTunerConfig
from .layout import SkipLayout
from .fused import Part
from .ops import build_op, linear_params


class SCTuner(SkipTuner):
    method: ClassVar[str] = "sc"

    def __init__(self, config: SCTunerConfig, layout: SkipLayout):
        super().__init__(config, layout)
        self.tuners = nn.ModuleDict(
            {
                str(j): build_op(config.op, layout.channels[enc], config.ratio)
                for enc, j in sorted(self.encoder_to_decoder.items(), key=lambda kv: kv[1])
            }
        )

    def delta(self, skip, x, hint=None):
        op = self.op_for(skip)
        return None if op is None else run_op(op, x)

    def part(self, skip, x, weight, hint=None):
        params = linear_params(self.op_for(skip), x.dtype)
        return None if params is None else Part(params, weight)
