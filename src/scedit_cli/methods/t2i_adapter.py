"""`t2i-adapter`: diffusers T2IAdapter (full adapter), features added inside the U-Net encoder (Table 2)."""

from __future__ import annotations

from pathlib import Path

from ..fsutil import atomic_dir
from ..conditions import condition_channels
from .base import Method
from .config import T2IAdapterConfig


class T2IAdapterMethod(Method):
    Config = T2IAdapterConfig

    def setup(self, base) -> None:
        from diffusers import T2IAdapter

        super().setup(base)
        if self.config.channels:
            channels = list(self.config.channels)
        elif base.is_sdxl:  # diffusers' SDXL adapter: 4 levels, the last at the deepest width
            channels = [*base.unet.config.block_out_channels, base.unet.config.block_out_channels[-1]]
        else:
            channels = list(base.unet.config.block_out_channels)
        self.adapter = T2IAdapter(
            in_channels=condition_channels(self.conditions[0]),
            channels=channels,
            num_res_blocks=self.config.num_res_blocks,
            # SDXL's adapter starts one level coarser (diffusers: factor 16 for the 8x VAE).
            downscale_factor=base.vae_scale_factor * (2 if base.is_sdxl else 1),
            adapter_type="full_adapter_xl" if base.is_sdxl else "full_adapter",
        )

    def trainable_modules(self):
        return [self.adapter]

    def named_trainable_parameters(self):
        return list(self.adapter.named_parameters())

    def predict(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        cond = self._single_condition(conditions)
        feats = self.adapter(cond.to(next(self.adapter.parameters()).dtype))
        return self._unet(self.unet, sample, timestep, encoder_hidden_states, added_cond_kwargs,
                          down_intrablock_additional_residuals=[f for f in feats])

    def save(self, output_dir, base_source=None, extra=None):
        path = Path(output_dir) / "t2i_adapter"
        with atomic_dir(path) as tmp:
            self.adapter.save_pretrained(tmp, safe_serialization=True)
        return [path]
