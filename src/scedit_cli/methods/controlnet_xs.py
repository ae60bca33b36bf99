"""`controlnet-xs`: diffusers ControlNet-XS (Table 2).

diffusers runs ControlNet-XS as one `UNetControlNetXSModel` that interleaves
the frozen U-Net and the adapter; it is built from the U-Net and a
`ControlNetXSAdapter.from_unet(size_ratio)`, and only the adapter's parts
train. The output is that whole model in diffusers format (`controlnet_xs/`),
which `StableDiffusionControlNetXSPipeline` accepts as its `unet`.
"""

from __future__ import annotations

from pathlib import Path

from ..fsutil import atomic_dir
from ..conditions import condition_channels
from .base import Method
from .config import ControlNetXSConfig
from .controlnet import embedding_channels


class ControlNetXSMethod(Method):
    Config = ControlNetXSConfig

    def setup(self, base) -> None:
        from diffusers import ControlNetXSAdapter, UNetControlNetXSModel

        super().setup(base)
        adapter = ControlNetXSAdapter.from_unet(
            base.unet, size_ratio=self.config.size_ratio,
            conditioning_channels=condition_channels(self.conditions[0]),
            conditioning_embedding_out_channels=embedding_channels(base.vae_scale_factor),
        )
        self.model = UNetControlNetXSModel.from_unet(base.unet, controlnet=adapter)
        self.model.freeze_unet_params()
        # The combined model holds its own copy of the U-Net weights: it is what runs.
        self.unet = self.model

    def trainable_modules(self):
        return [self.model]

    def extra_modules(self):
        return []

    def named_trainable_parameters(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def predict(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        cond = self._single_condition(conditions)
        kw = {"added_cond_kwargs": added_cond_kwargs} if added_cond_kwargs is not None else {}
        return self.model(sample, timestep, encoder_hidden_states=encoder_hidden_states, controlnet_cond=cond,
                          return_dict=False, **kw)[0]

    def save(self, output_dir, base_source=None, extra=None):
        path = Path(output_dir) / "controlnet_xs"
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
        return [path]
