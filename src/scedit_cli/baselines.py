"""The paper's baseline methods, built from diffusers and peft (never re-implemented).

Each builder returns the trainable module(s) for a given base U-Net; the
training registry and `scedit bench` both use these, so the parameter counts
they report are those of the models that really train.
"""

from __future__ import annotations

import torch
from torch import nn

# DESIGN.md section 4: LoRA on the attention projections and the feed-forward.
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def lora_config(rank: int, targets: list[str] | None = None, alpha: float | None = None, dropout: float = 0.0):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        target_modules=list(targets or DEFAULT_LORA_TARGETS),
        init_lora_weights="gaussian",
    )


def add_lora(unet: nn.Module, rank: int, targets: list[str] | None = None, alpha: float | None = None,
             adapter_name: str = "default") -> nn.Module:
    """Freeze `unet` and inject peft LoRA layers in place; returns the U-Net."""
    from peft import inject_adapter_in_model

    unet.requires_grad_(False)
    return inject_adapter_in_model(lora_config(rank, targets, alpha), unet, adapter_name=adapter_name)


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in unet.named_parameters() if "lora_" in n]


def build_controlnet(unet: nn.Module, conditioning_channels: int = 3, copy_weights: bool = True):
    """ControlNet initialised from the U-Net's encoder (diffusers `ControlNetModel.from_unet`)."""
    from diffusers import ControlNetModel

    meta = next(unet.parameters()).device.type == "meta"
    ctx = torch.device("meta") if meta else torch.device(next(unet.parameters()).device)
    with ctx:
        return ControlNetModel.from_unet(
            unet, conditioning_channels=conditioning_channels, load_weights_from_unet=copy_weights and not meta
        )


def build_t2i_adapter(in_channels: int = 3, channels=(320, 640, 1280, 1280), downscale_factor: int = 8,
                      adapter_type: str = "full_adapter"):
    """T2I-Adapter (diffusers `T2IAdapter`), full adapter as in the paper."""
    from diffusers import T2IAdapter

    return T2IAdapter(
        in_channels=in_channels,
        channels=list(channels),
        num_res_blocks=2,
        downscale_factor=downscale_factor,
        adapter_type=adapter_type,
    )


def build_controlnet_xs(unet: nn.Module, size_ratio: float = 0.1, conditioning_channels: int = 3):
    """ControlNet-XS adapter (diffusers `ControlNetXSAdapter.from_unet`); its size ratio is a choice."""
    from diffusers import ControlNetXSAdapter

    return ControlNetXSAdapter.from_unet(unet, size_ratio=size_ratio, conditioning_channels=conditioning_channels)


def count(module_or_params) -> int:
    if isinstance(module_or_params, nn.Module):
        return sum(p.numel() for p in module_or_params.parameters())
    return sum(p.numel() for p in module_or_params)
