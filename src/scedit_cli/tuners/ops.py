"""Tuner OPs: the small per-skip networks `T_j` of SC- and CSC-Tuners.

Each OP maps a (B, C, H, W) skip feature to a tensor of the same shape. The last
layer starts at zero, so `x + op(x)` is exactly `x` before training.
"""

from __future__ import annotations

from torch import nn


def _zero_(layer: nn.Module) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class LinearOp(nn.Module):
    """`W_up · GELU(W_down · x)` over channels (the paper's SC-Tuner, Table 5c "Linear").

    Applied per pixel on a channels-last view; parameters `2·C·d + d + C`.
    Names `ln1` / `ln2` follow the official checkpoints (down / up projection).
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.ln1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.ln2 = nn.Linear(hidden, channels)
        _zero_(self.ln2)

    def forward(self, x):
        y = self.ln2(self.act(self.ln1(x.permute(0, 2, 3, 1))))
        return y.permute(0, 3, 1, 2)


class ConvOp(nn.Module):
    """`conv_up(GELU(conv_down(x)))` with k x k convolutions (Table 5c "Conv", k=3).

    k=1 is the 1x1-conv form of `LinearOp` (same parameters, same function).
    """

    def __init__(self, channels: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, kernel, padding=kernel // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)
        _zero_(self.conv2)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


OPS = {
    "linear": lambda c, d: LinearOp(c, d),
    "conv1x1": lambda c, d: ConvOp(c, d, kernel=1),
    "conv3x3": lambda c, d: ConvOp(c, d, kernel=3),
}


def build_op(kind: str, channels: int, ratio: float):
    if kind not in OPS:
        raise ValueError(f"unknown tuner op {kind!r}; choose one of {', '.join(OPS)}")
    hidden = max(1, int(channels // ratio))
    return OPS[kind](channels, hidden)
