"""Condition images for CSC-Tuners in ComfyUI: IMAGE tensors in, hint-encoder input out.

A ComfyUI IMAGE is a float tensor (batch, height, width, channels) in [0, 1]; the hint encoder takes
(batch, channels, height, width) in [0, 1] at the pixel size of the image being generated. The image
is brought to that size the way ComfyUI's ControlNet brings its hint image (`comfy.utils.common_upscale`
with "nearest-exact" and "center"), and paired with the latents the way ControlNet pairs them
(`broadcast_image_to`), so a graph that feeds the same image to a ControlNet and to an SCEdit Control
node conditions both alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SceditError

# ITU-R 601-2 luma, the weights PIL's convert("L") uses: `scedit sample` feeds 1-channel tuners that way.
_LUMA = (0.299, 0.587, 0.114)


def image_to_condition(image, channels: int, name: str) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> (B, `channels`, H, W) float32 on the CPU, for a tuner taking `channels`."""
    if not torch.is_tensor(image) or image.ndim != 4:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise SceditError(f"SCEdit Control: {name} needs an IMAGE (batch, height, width, channels), got {shape}")
    cond = image.detach().to("cpu", torch.float32).movedim(-1, 1)
    if cond.shape[1] == 4:
        cond = cond[:, :3]  # an alpha channel is not part of a condition map
    if channels == 3 and cond.shape[1] == 1:
        cond = cond.expand(-1, 3, -1, -1)
    elif channels == 1 and cond.shape[1] == 3:
        cond = (cond * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if cond.shape[1] != channels:
        raise SceditError(
            f"SCEdit Control: {name} takes {channels}-channel conditions but the IMAGE has {image.shape[-1]} "
            "channels; ComfyUI images feed 1- and 3-channel tuners"
        )
    return cond.contiguous()


def fit_hint(cond: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop the centre to the aspect ratio of (width, height), then resize with "nearest-exact"."""
    old_h, old_w = cond.shape[-2:]
    if (old_h, old_w) == (height, width):
        return cond
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    cond = cond[:, :, y:old_h - y, x:old_w - x]
    return F.interpolate(cond, size=(height, width), mode="nearest-exact")


def batch_hint(c: torch.Tensor, batch: int, chunks: int) -> torch.Tensor:
    """Hint features for a U-Net batch of `chunks` equal chunks (cond / uncond, ComfyUI's `cond_or_uncond`).

    One condition image serves every latent; with several, latent i of each chunk gets image
    i mod (number of images)."""
    if batch % chunks:
        raise SceditError(f"SCEdit Control: U-Net batch {batch} is not {chunks} equal chunks (cond_or_uncond)")
    if c.shape[0] == 1:
        return c
    per_chunk = batch // chunks
    index = torch.arange(per_chunk, device=c.device) % c.shape[0]
    return c[index].repeat(chunks, *([1] * (c.ndim - 1)))
