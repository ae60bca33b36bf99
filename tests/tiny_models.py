"""Tiny configurations of the real diffusers architectures, for CPU tests.

Same block types and skip layout as SD 1.5 / SD 2.1 / SDXL, with a few
channels each, so every test exercises the real model code in seconds.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from diffusers import UNet2DConditionModel

M = TypeVar("M", bound=torch.nn.Module)

_BASE = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=4,
)


def tiny_unet_config(kind: str = "sd15") -> dict:
    if kind in ("sd15", "sd21"):
        cfg = dict(
            _BASE,
            block_out_channels=(8, 16, 32, 32),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            layers_per_block=2,
        )
        if kind == "sd21":
            cfg["use_linear_projection"] = True
        return cfg
    if kind == "sdxl":
        return dict(
            _BASE,
            block_out_channels=(8, 16, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            transformer_layers_per_block=[1, 1, 2],
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
        )
    raise ValueError(kind)


def randomize_(module: M, seed: int = 0, scale: float = 0.2) -> M:
    """Give every parameter (zero-initialised ones too) random N(0, scale^2) values: a "trained" module.
    Returns `module`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def save_random_csc_tuners(unet, root, conditions=("canny", "color")) -> dict:
    """A "trained" CSC-Tuner (random weights, seed = its position) per condition for `unet`, saved as
    `root/csc_<condition>`; returns {condition: folder}."""
    from scedit_cli.tuners import CSCTuner, CSCTunerConfig, SkipLayout, save_tuner

    layout = SkipLayout.from_unet(unet)
    return {cond: save_tuner(randomize_(CSCTuner(CSCTunerConfig(hint_downscale=2, hint_kernel=1, condition=cond),
                                                 layout), seed), root / f"csc_{cond}", base="tiny")
            for seed, cond in enumerate(conditions)}


def make_tiny_unet(kind: str = "sd15", seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(kind))
    # Random (not zero) output conv so every test sees a non-trivial output.
    unet.eval()
    return unet


def unet_inputs(unet: UNet2DConditionModel, batch: int = 2, size: int = 16, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    kwargs = dict(
        sample=torch.randn(batch, cfg.in_channels, size, size, generator=g),
        timestep=torch.tensor([10] * batch),
        encoder_hidden_states=torch.randn(batch, 5, cfg.cross_attention_dim, generator=g),
    )
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 32, generator=g),
            "time_ids": torch.randn(batch, 6, generator=g),
        }
    return kwargs


# --- a whole tiny Stable Diffusion pipeline, saved as a real diffusers folder ---

TINY_WORDS = (
    "a an the photo of red green blue yellow black white circle square triangle cat dog "
    "on in at top bottom left right background style <sce>"
).split()


def make_tiny_tokenizer(folder):
    """A word-level CLIP tokenizer (vocab.json + empty merges) written to `folder`."""
    import json
    from pathlib import Path

    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(specials + [w + "</w>" for w in TINY_WORDS])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    tok.save_pretrained(folder)
    return tok


def make_tiny_pipeline(folder, kind: str = "sd15", prediction_type: str = "epsilon", seed: int = 0):
    """Save a tiny but complete SD 1.5/2.1/SDXL pipeline folder; returns the pipeline.

    Latent 4 channels, VAE factor 2 (one downsampler), 32-px images -> 16-px latents.
    """
    from pathlib import Path

    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = make_tiny_unet(kind, seed=seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=32,
    )
    tok = make_tiny_tokenizer(folder / "tokenizer")
    text_cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=32,
    )
    text_encoder = CLIPTextModel(text_cfg)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type=prediction_type,
    )
    if kind == "sdxl":
        tok2 = make_tiny_tokenizer(folder / "tokenizer_2")
        # SDXL's U-Net cross-attends to both encoders' hidden states concatenated:
        # 16 + 16 = 32 channels; the second encoder's projection feeds text_embeds.
        narrow = {**text_cfg.to_dict(), "hidden_size": 16, "intermediate_size": 20}
        text_encoder = CLIPTextModel(CLIPTextConfig(**narrow))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**narrow))
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tok,
            tokenizer_2=tok2,
            unet=unet,
            scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tok,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(folder)
    return pipe
