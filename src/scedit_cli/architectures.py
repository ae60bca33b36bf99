"""Real-size Stable Diffusion U-Net configurations, for building without a download.

These are the published `unet/config.json` settings of SD 1.5, SD 2.1 and SDXL
base 1.0 (only the keys that differ from diffusers' defaults). `build_unet`
constructs the model on the `meta` device (shapes only, no memory) or with
random weights on a real device, so parameter counts and efficiency
benchmarks run anywhere without fetching a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import SceditError
from .models import BaseModel, vae_scale_factor

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
# The published schedulers' prediction types; sd21-base is SD 2.1's U-Net at 512 px, trained on epsilon.
PREDICTION = {"sd15": "epsilon", "sd21": "v_prediction", "sd21-base": "epsilon", "sdxl": "epsilon"}


def unet_arch(arch: str) -> str:
    """The U-Net architecture of a `model.arch` name (sd21-base shares SD 2.1's U-Net)."""
    return "sd21" if arch == "sd21-base" else arch


def arch_of(base: BaseModel) -> str:
    """sd15 / sd21 / sdxl, from the U-Net's configuration."""
    if base.is_sdxl:
        return "sdxl"
    return "sd21" if getattr(base.unet.config, "use_linear_projection", False) else "sd15"


def unet_config(arch: str) -> dict:
    if arch not in UNET_CONFIGS:
        raise SceditError(f"unknown architecture {arch!r}; choose one of {', '.join(UNET_CONFIGS)}")
    return dict(UNET_CONFIGS[arch])


def build_unet(arch: str, device: str | torch.device = "meta", dtype: torch.dtype | None = None, seed: int = 0):
    """The real-size U-Net of `arch`: on `meta` (no memory) or with random weights."""
    from diffusers import UNet2DConditionModel

    config = unet_config(arch)
    if str(device) != "meta":
        torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**config)
    return unet.to(dtype) if dtype is not None else unet


def _hub_file(repo: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename)
    except Exception:  # invalid repo id and the like: not in the cache
        return None
    return Path(found) if isinstance(found, str) else None


PIPELINE_FILES = {"unet": "unet/config.json", "scheduler": "scheduler/scheduler_config.json",
                  "vae": "vae/config.json", "index": "model_index.json"}


def pipeline_configs(source: str) -> dict[str, dict]:
    """The configuration files of a diffusers pipeline that are here (a local folder or the HF cache),
    by part (`PIPELINE_FILES`'s keys); {} when none are."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = {k: path / n for k, n in PIPELINE_FILES.items()}
    elif path.exists() or source.startswith((".", "/", "~")):
        return {}
    else:
        files = {k: _hub_file(source, n) for k, n in PIPELINE_FILES.items()}
    return {k: json.loads(f.read_text()) for k, f in files.items() if f is not None and f.is_file()}


def meta_base(source: str | None = None, arch: str | None = None) -> tuple[BaseModel, str] | None:
    """A U-Net-only base on the meta device (shapes only, no memory, no download), and where its
    configuration came from: `source`'s own configuration files when all are here, else `arch`'s
    published configuration; None when neither is available."""
    from diffusers import UNet2DConditionModel

    cfgs = pipeline_configs(source) if source else {}
    if len(cfgs) == len(PIPELINE_FILES):
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(cfgs["unet"])
        index = cfgs["index"]
        is_sdxl = "text_encoder_2" in index and index["text_encoder_2"][0] is not None
        return BaseModel.from_unet(unet, is_sdxl=is_sdxl,
                                   prediction_type=cfgs["scheduler"].get("prediction_type", "epsilon"),
                                   vae_scale_factor=vae_scale_factor(cfgs["vae"]),
                                   source=source), "model configuration"
    if not arch:
        return None
    unet = build_unet(unet_arch(arch), device="meta")
    return BaseModel.from_unet(unet, is_sdxl=arch == "sdxl", prediction_type=PREDICTION[arch],
                               source=source or arch), f"published {arch} configuration (weights not here)"


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
