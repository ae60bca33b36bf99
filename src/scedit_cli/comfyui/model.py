"""What the nodes read from a ComfyUI MODEL (a `comfy.model_patcher.ModelPatcher`).

Only attributes ComfyUI has had for a long time are read: the U-Net
(`model.model.diffusion_model`, an `openaimodel.UNetModel`) with its
`model_channels`, `channel_mult` and `num_res_blocks`; `model.model.model_config.unet_config`;
and `model.model.latent_format`.
"""

from __future__ import annotations

import logging
import re

from ..errors import SceditError
from ..tuners import SkipLayout, SkipTuner

log = logging.getLogger("scedit")

# Cross-attention width of each Stable Diffusion family (ComfyUI's unet_config["context_dim"]).
FAMILIES_BY_CONTEXT = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
# How a base recorded in a tuner file (a hub id, a file or folder name, or `scedit convert --arch`'s
# sd15 / sd21 / sdxl) names its family; names that match none are not judged.
_FAMILY_PATTERNS = (
    ("SDXL", re.compile(r"xl", re.I)),
    ("SD 2.x", re.compile(r"sd[-_ ]?2|diffusion[-_ ]?v?2|v2[-_.]?[01]", re.I)),
    ("SD 1.x", re.compile(r"sd[-_ ]?1|diffusion[-_ ]?v?1|v1[-_.]?[2345]", re.I)),
)


def diffusion_model(model):
    try:
        return model.model.diffusion_model
    except AttributeError:
        raise SceditError(
            f"SCEdit: expected a ComfyUI MODEL (from Load Checkpoint), got {type(model).__name__}"
        ) from None


def skip_layout(model) -> SkipLayout:
    """The skip layout of the MODEL's U-Net, in scedit's terms (the one `SkipLayout.from_unet` gives for
    the same network in diffusers), from how `UNetModel.__init__` builds its input blocks."""
    unet = diffusion_model(model)
    base = getattr(unet, "model_channels", None)
    mult = getattr(unet, "channel_mult", None)
    blocks = getattr(unet, "num_res_blocks", None)
    if base is None or mult is None or blocks is None or not hasattr(unet, "output_blocks"):
        raise SceditError(
            f"SCEdit works on Stable Diffusion U-Nets (SD 1.x, 2.x, SDXL); this MODEL is a "
            f"{type(unet).__name__}, which has no U-Net skip connections"
        )
    mult = list(mult)
    blocks = [blocks] * len(mult) if isinstance(blocks, int) else list(blocks)
    channels, downscale, scale = [base], [1], 1
    for level, m in enumerate(mult):
        channels += [m * base] * blocks[level]
        downscale += [scale] * blocks[level]
        if level != len(mult) - 1:  # every level but the last ends with a downsampler, itself a skip
            scale *= 2
            channels.append(m * base)
            downscale.append(scale)
    remaining, groups = list(range(len(channels))), []
    for level in reversed(range(len(mult))):
        n = blocks[level] + 1  # output blocks of a level: one per res block, plus one for the downsampler's skip
        groups.append(tuple(remaining[-n:]))
        del remaining[-n:]
    if remaining or len(unet.output_blocks) != len(channels):
        raise SceditError(
            f"SCEdit: this U-Net has {len(unet.output_blocks)} output blocks for {len(channels)} skips; "
            "its layout is not one scedit understands"
        )
    return SkipLayout(tuple(channels), tuple(downscale), tuple(groups))


def latent_factor(model) -> int:
    """Pixels per latent pixel. ComfyUI versions whose latent formats lack the attribute only ran
    U-Nets on 8x VAEs."""
    fmt = getattr(model.model, "latent_format", None)
    return int(getattr(fmt, "spacial_downscale_ratio", 8))


def model_family(model) -> str | None:
    config = getattr(getattr(model.model, "model_config", None), "unet_config", None) or {}
    return FAMILIES_BY_CONTEXT.get(config.get("context_dim"))


def base_family(base: str | None) -> str | None:
    """The family a tuner file's recorded base model names, or None where the name does not tell."""
    if not base:
        return None
    return next((family for family, pattern in _FAMILY_PATTERNS if pattern.search(str(base))), None)


def check_layout(tuner: SkipTuner, layout: SkipLayout, name: str) -> None:
    """Refuse a tuner built for another skip layout (converted checkpoints come here; tuner files are
    checked as they load)."""
    if tuner.layout != layout:
        raise SceditError(
            f"SCEdit: tuner {name} was built for a U-Net with {tuner.layout.describe()}, but this model's U-Net "
            f"has {layout.describe()}: use a tuner trained for this base model"
        )


def warn_if_other_base(tuner: SkipTuner, model, name: str) -> str | None:
    """Log (and return) a warning when the tuner's recorded base is of another family than the model.

    SD 1.x and 2.x U-Nets share one skip layout, so the layout check cannot tell them apart."""
    recorded = tuner.file_meta.get("base_model")
    theirs, ours = base_family(recorded), model_family(model)
    if theirs is None or ours is None or theirs == ours:
        return None
    message = (f"SCEdit: tuner {name} was trained on {recorded} ({theirs}) but this model is {ours}; "
               "its edits may not fit this model")
    log.warning(message)
    return message

