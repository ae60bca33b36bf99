"""Condition maps as the tensor a CSC-Tuner reads: one function for training data and sampling.

A map becomes float32 in [0, 1] (torchvision's ToTensor convention, as the
official code feeds its hints): an RGB map gives 3 channels, an "L" mask 1
(255 = hidden -> 1.0). A condition with several maps concatenates them in the
order of its metadata columns (`CONDITIONS[name].columns`): for inpaint and
outpaint the masked cut-out, then its mask, 4 channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..images import to_rgb8


def image_tensor(image: Image.Image) -> torch.Tensor:
    """(C, H, W) float32 in [0, 1]: 1 channel for an "L" image, else 3 (RGB)."""
    if image.mode not in ("RGB", "L"):
        image = to_rgb8(image)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def condition_tensor(maps: Sequence[Image.Image]) -> torch.Tensor:
    """(C, H, W): the maps of one condition, in column order, stacked along channels."""
    return torch.cat([image_tensor(m) for m in maps], 0)
