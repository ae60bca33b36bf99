"""Operator counts: how many ATen operators a piece of code dispatches, views apart.

At batch 1 a GPU finishes each kernel before Python has launched the next, so sampling time follows the
number of operators, not their arithmetic. The count does not depend on the device's speed, so a CPU
measures what a tuner adds to that launch-bound regime (where code picks other operators per device,
as the sampling edit stacks skips except on a CPU, count with that choice made as on the GPU).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Returns its input's storage under a new shape like a view, though its schema does not say so.
_VIEW_LIKE = {torch.ops.aten._unsafe_view.default}


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators run inside `with OpCounter() as c:` (below autograd: what executes).

    `c.ops` counts all of them by name; `c.total` is their number, `c.views` those that only re-describe
    a tensor (no kernel on any device), `c.kernels` the rest."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        if func.is_view or func in _VIEW_LIKE:
            self.views += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def kernels(self) -> int:
        return self.total - self.views


__all__ = ["OpCounter"]
