"""`lora`: peft LoRA on the U-Net (the paper's LoRA baselines, Table 1).

Targets default to the attention projections and the feed-forward of every
transformer block (`DEFAULT_LORA_TARGETS`). The
output is diffusers' LoRA format (`pytorch_lora_weights.safetensors`), which
`pipeline.load_lora_weights(folder)` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SceditError
from ..fsutil import atomic_dir
from .base import Method
from .config import DEFAULT_LORA_TARGETS, LoRAConfig, check_lora


def peft_config(cfg: LoRAConfig):
    """peft's LoraConfig of our settings (alpha 0 means alpha = rank: scale 1)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.targets), init_lora_weights="gaussian")


def inject_lora(unet, cfg: LoRAConfig):
    """Inject peft LoRA layers into `unet` in place (the caller has frozen it); returns peft's config."""
    from peft import inject_adapter_in_model

    check_lora(cfg.rank, cfg.dropout)
    lcfg = peft_config(cfg)
    try:
        inject_adapter_in_model(lcfg, unet, adapter_name="default")
    except ValueError as e:
        raise SceditError(
            f"method.targets {cfg.targets} match no layer of this U-Net ({str(e).splitlines()[0][:120]}); "
            f"use module names such as {', '.join(DEFAULT_LORA_TARGETS)}"
        ) from None
    return lcfg


def lora_named_parameters(unet):
    return [(n, p) for n, p in unet.named_parameters() if "lora_" in n]


def save_lora(unet, lcfg, path: Path, is_sdxl: bool, extra: dict | None = None) -> Path:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name="default")
    state = convert_state_dict_to_diffusers({k: v.detach().cpu().contiguous() for k, v in state.items()})
    cls = StableDiffusionXLPipeline if is_sdxl else StableDiffusionPipeline
    with atomic_dir(path) as tmp:
        cls.save_lora_weights(tmp, unet_lora_layers=state, safe_serialization=True)
        meta = {"r": lcfg.r, "lora_alpha": lcfg.lora_alpha, "target_modules": sorted(lcfg.target_modules),
                "lora_dropout": lcfg.lora_dropout, **(extra or {})}
        (tmp / "lora_config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


class LoRAMethod(Method):
    Config = LoRAConfig

    def setup(self, base) -> None:
        super().setup(base)
        self.lora_cfg = inject_lora(base.unet, self.config)

    def trainable_modules(self):
        return [self.unet]

    def extra_modules(self):
        return []

    def named_trainable_parameters(self):
        return lora_named_parameters(self.unet)

    def predict(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        return self._unet(self.unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)

    def save(self, output_dir, base_source=None, extra=None):
        return [save_lora(self.unet, self.lora_cfg, Path(output_dir) / "lora", self.base.is_sdxl,
                          {"base_model": base_source, **(extra or {})})]
