"""`controllora`: a condition encoder + LoRA on the U-Net (ControlLoRA, HighCWu; Table 2).

The condition encoder is the ControlNet-style pre-hint encoder (pixel size ->
latent size, 256 channels) followed by a zero-initialised 1x1 conv to the
width of `conv_in`; its output is added to `conv_in`'s output (as ControlNet
adds its hint), and LoRA adapts the U-Net to use it. ControlLoRA's exact
layout is not in the paper; the rank default (55) makes the size closest to
its 21.52M. Output: `controllora/` with the LoRA in diffusers format and
`condition_encoder.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from ..fsutil import atomic_path
from ..tuners.csc import pre_hint_encoder
from ..conditions import condition_channels
from .base import Method
from .config import ControlLoRAConfig, LoRAConfig
from .lora import inject_lora, lora_named_parameters, save_lora


class ConditionEncoder(nn.Module):
    def __init__(self, in_channels: int, downscale: int, out_channels: int):
        super().__init__()
        self.pre_hint_blocks = pre_hint_encoder(in_channels, downscale)
        self.act = nn.SiLU()
        self.proj = nn.Conv2d(256, out_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, cond):
        return self.proj(self.act(self.pre_hint_blocks(cond.to(self.proj.weight.dtype))))


class ControlLoRAMethod(Method):
    Config = ControlLoRAConfig

    def setup(self, base) -> None:
        super().setup(base)
        self.lora_cfg = inject_lora(base.unet, LoRAConfig(rank=self.config.rank, alpha=self.config.alpha,
                                                           targets=self.config.targets))
        self.encoder = ConditionEncoder(condition_channels(self.conditions[0]), base.vae_scale_factor,
                                        base.unet.conv_in.out_channels)
        self._features = None
        self._hook = base.unet.conv_in.register_forward_hook(self._add_features)

    def _add_features(self, module, args, output):
        if self._features is None:
            return output
        f = self._features
        if f.shape[0] != output.shape[0]:
            f = f.repeat(output.shape[0] // f.shape[0], 1, 1, 1)
        return output + f.to(output.dtype)

    def trainable_modules(self):
        return [self.encoder, self.unet]

    def extra_modules(self):
        return [self.encoder]

    def named_trainable_parameters(self):
        return [(f"encoder.{n}", p) for n, p in self.encoder.named_parameters()] + lora_named_parameters(self.unet)

    def predict(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        self._features = self.encoder(self._single_condition(conditions))
        try:
            return self._unet(self.unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)
        finally:
            self._features = None

    def save(self, output_dir, base_source=None, extra=None):
        path = Path(output_dir) / "controllora"
        save_lora(self.unet, self.lora_cfg, path, self.base.is_sdxl,
                  {"base_model": base_source, "condition": self.conditions[0], **(extra or {})})
        state = {k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}
        meta = {"condition": self.conditions[0], "in_channels": condition_channels(self.conditions[0]),
                "downscale": self.base.vae_scale_factor, "out_channels": int(self.encoder.proj.out_channels)}
        with atomic_path(path / "condition_encoder.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"scedit": json.dumps(meta)})
        return [path]
