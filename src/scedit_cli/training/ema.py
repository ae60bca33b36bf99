"""Exponential moving average of the trainable weights (train.ema_decay).

After every optimizer step: shadow = decay * shadow + (1 - decay) * weight, in
fp32. Saved in checkpoints (exact resume) and, at the end, as a second copy of
the method's output in OUTPUT/ema/ (the same format, EMA weights).
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import SceditError


class EMA:
    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = float(decay)
        self.params = named_params
        self.shadow = {n: p.detach().float().clone() for n, p in named_params}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params:
            self.shadow[n].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        if set(state) != set(self.shadow):
            raise SceditError(f"{source}: EMA weights do not match this method's trainable weights; "
                              "resume with the recipe that wrote it")
        for n, t in state.items():
            self.shadow[n].copy_(t)

    @contextlib.contextmanager
    def swapped_in(self):
        """The EMA weights in the method's parameters for the duration (e.g. to save them)."""
        saved = {n: p.detach().clone() for n, p in self.params}
        with torch.no_grad():
            for n, p in self.params:
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params:
                    p.copy_(saved[n])
