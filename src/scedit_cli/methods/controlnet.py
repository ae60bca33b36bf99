"""`controlnet`: diffusers ControlNetModel initialised from the U-Net encoder (Table 2)."""

from __future__ import annotations

import math
from pathlib import Path

from ..fsutil import atomic_dir
from ..conditions import condition_channels
from .base import Method
from .config import ControlNetConfig

# ControlNet's conditioning embedding: one stride-2 conv per step after the first.
EMBEDDING_CHANNELS = (16, 32, 96, 256)


def embedding_channels(vae_scale_factor: int) -> tuple[int, ...]:
    """Conditioning-embedding channels that bring a pixel-size condition to the latent size."""
    return EMBEDDING_CHANNELS[: int(math.log2(vae_scale_factor)) + 1]


class ControlNetMethod(Method):
    Config = ControlNetConfig

    def setup(self, base) -> None:
        from diffusers import ControlNetModel

        super().setup(base)
        meta = next(base.unet.parameters()).device.type == "meta"
        self.controlnet = ControlNetModel.from_unet(
            base.unet,
            conditioning_channels=condition_channels(self.conditions[0]),
            conditioning_embedding_out_channels=embedding_channels(base.vae_scale_factor),
            load_weights_from_unet=not meta,
        )
        self.controlnet.requires_grad_(True)

    def trainable_modules(self):
        return [self.controlnet]

    def named_trainable_parameters(self):
        return list(self.controlnet.named_parameters())

    def enable_gradient_checkpointing(self):
        super().enable_gradient_checkpointing()
        self.controlnet.enable_gradient_checkpointing()

    def predict(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        cond = self._single_condition(conditions)
        kw = {"added_cond_kwargs": added_cond_kwargs} if added_cond_kwargs is not None else {}
        down, mid = self.controlnet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, controlnet_cond=cond,
            return_dict=False, **kw,
        )
        return self._unet(self.unet, sample, timestep, encoder_hidden_states, added_cond_kwargs,
                          down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def save(self, output_dir, base_source=None, extra=None):
        path = Path(output_dir) / "controlnet"
        with atomic_dir(path) as tmp:
            self.controlnet.save_pretrained(tmp, safe_serialization=True)
        return [path]
