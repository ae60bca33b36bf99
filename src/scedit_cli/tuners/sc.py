"""SC-Tuner (paper Eq. 5): `O_j(x) = x + T_j(x)` on each tuned skip connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .base import SkipTuner, TunerConfig, run_op
from .layout import SkipLayout
from .ops import build_op, fusable, pixel_mlp_add


@dataclass
class SCTunerConfig(TunerConfig):
    """SC-Tuner settings. Defaults are the paper's: Linear OP, ratio 1, all skips."""

    method: ClassVar[str] = "sc"


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

    def delta(self, skip, x):
        j = self.encoder_to_decoder.get(skip)
        if j is None:
            return None
        return run_op(self.tuners[str(j)], x)

    def accumulate(self, skip, x, out, weight):
        j = self.encoder_to_decoder.get(skip)
        if j is None:
            return out
        op = self.tuners[str(j)]
        if not fusable(op, x):
            return super().accumulate(skip, x, out, weight)
        b, c = x.shape[:2]
        return pixel_mlp_add(op.batched(b)[1], x.reshape(b, c, -1), out.reshape(b, c, -1), weight).view(x.shape)
