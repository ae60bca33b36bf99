"""Which torch device a command runs on: one rule and one set of error texts for sampling, the latent
cache, condition detectors and the benchmarks."""

from __future__ import annotations

import torch

from .errors import SceditError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` or 'auto': the GPU when one is visible, else the CPU; otherwise the named device, refused
    when it is unknown or is a CUDA device on a machine without one."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SceditError(f"--device {device!r}: unknown device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SceditError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev
