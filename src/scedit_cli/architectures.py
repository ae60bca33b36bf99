"""Real-size Stable Diffusion U-Net configurations, for building without a download.

These are the published `unet/config.json` settings of SD 1.5, SD 2.1 and SDXL
base 1.0 (only the keys that differ from diffusers' defaults). `build_unet`
constructs the model on the `meta` device (shapes only, no memory) or with
random weights on a real device, so parameter counts and efficiency
benchmarks run anywhere without fetching a checkpoint.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from .errors import SceditError

UNET_CONFIGS: dict[str, dict] = {
    "sd15": dict(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
    ),
    "sd21": dict(
        sample_size=96,
        cross_attention_dim=1024,
        attention_head_dim=[5, 10, 20, 20],
        use_linear_projection=True,
    ),
    "sdxl": dict(
        sample_size=128,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        transformer_layers_per_block=[1, 2, 10],
        attention_head_dim=[5, 10, 20],
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}

ARCH_NAMES = {"sd15": "SD 1.5", "sd21": "SD 2.1", "sdxl": "SDXL"}


def unet_config(arch: str) -> dict:
    if arch not in UNET_CONFIGS:
        raise SceditError(f"unknown architecture {arch!r}; choose one of {', '.join(UNET_CONFIGS)}")
    return dict(UNET_CONFIGS[arch])


def build_unet(arch: str, device: str | torch.device = "meta", dtype: torch.dtype | None = None, seed: int = 0):
    """The real-size U-Net of `arch`: on `meta` (no memory) or with random weights."""
    config = unet_config(arch)
    if str(device) == "meta":
        with torch.device("meta"):
            return UNet2DConditionModel(**config)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**config)
    return unet.to(dtype) if dtype is not None else unet


# SD 1.5's VAE (`vae/config.json`) and CLIP ViT-L/14 text encoder (`text_encoder/config.json`), for
# timing what the latent / text cache saves (benchmarks/bench_cache.py) without a download.
VAE_CONFIGS: dict[str, dict] = {
    "sd15": dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), sample_size=512, act_fn="silu", scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ),
}
TEXT_ENCODER_CONFIGS: dict[str, dict] = {
    "sd15": dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
    ),
}


def build_vae(arch: str = "sd15", seed: int = 0):
    from diffusers import AutoencoderKL

    if arch not in VAE_CONFIGS:
        raise SceditError(f"no VAE config for {arch!r}; choose one of {', '.join(VAE_CONFIGS)}")
    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIGS[arch])


def build_text_encoder(arch: str = "sd15", seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch not in TEXT_ENCODER_CONFIGS:
        raise SceditError(f"no text-encoder config for {arch!r}; choose one of {', '.join(TEXT_ENCODER_CONFIGS)}")
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIGS[arch]))
