"""Step time: the median of N steps after warm-up, synchronised on a GPU."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..errors import SceditError


@dataclass
class StepTiming:
    median_s: float
    mean_s: float
    min_s: float
    max_s: float
    steps: int
    warmup: int
    times_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def synchronize(device: str | torch.device | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], steps: int = 5, warmup: int = 1, device: str | torch.device | None = None,
               on_step: Callable[[], None] | None = None) -> StepTiming:
    """Run `step` `warmup` times untimed, then `steps` times timed; each timed step ends in a
    device synchronisation, so GPU work is inside the step it belongs to."""
    if steps < 1:
        raise SceditError(f"--steps must be >= 1, got {steps}")
    if warmup < 0:
        raise SceditError(f"--warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        step()
        if on_step:
            on_step()
    synchronize(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if on_step:
            on_step()
    return StepTiming(median_s=statistics.median(times), mean_s=statistics.fmean(times), min_s=min(times),
                      max_s=max(times), steps=steps, warmup=warmup, times_s=times)
