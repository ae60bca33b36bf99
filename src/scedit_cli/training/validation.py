"""Validation samples during training: DDIM with classifier-free guidance through `Method.predict`,
so every method (tuners, LoRA, ControlNet, ...) is sampled the same way."""

from __future__ import annotations

import torch


def text_embeddings(base, captions: list[str], device, negative: bool = False):
    """(prompt embeds, added-cond text embeds or None) from the frozen text encoder(s), no grad."""
    with torch.no_grad():
        if base.is_sdxl:
            pe, _, pooled, _ = base.pipeline.encode_prompt(
                captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return pe, pooled
        pe, _ = base.pipeline.encode_prompt(captions, device, 1, False)
        return pe, None


def time_ids(original_sizes, crop_top_lefts, resolution, device, dtype):
    """SDXL's added time ids: original size, crop top-left, target size (an int for a square, or (h, w))."""
    target = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    rows = [[*o, *c, *target] for o, c in zip(original_sizes, crop_top_lefts)]
    return torch.tensor(rows, device=device, dtype=dtype)


@torch.no_grad()
def sample_images(method, base, prompts: list[str], conditions: list[torch.Tensor] | None, resolution: int,
                  steps: int, guidance_scale: float, seed: int, device, autocast) -> list:
    """One image per prompt (PIL). `conditions`: one (N, C, H, W) tensor in [0, 1] per method condition."""
    from diffusers import DDIMScheduler
    from PIL import Image

    n = len(prompts)
    scheduler = DDIMScheduler.from_config(base.scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    pos, pooled = text_embeddings(base, prompts, device)
    neg, neg_pooled = text_embeddings(base, [""] * n, device)
    ehs = torch.cat([neg, pos])
    added = None
    if base.is_sdxl:
        ids = time_ids([(resolution, resolution)] * n, [(0, 0)] * n, resolution, device, pooled.dtype)
        added = {"text_embeds": torch.cat([neg_pooled, pooled]), "time_ids": torch.cat([ids, ids])}
    conds = None
    if conditions:
        conds = [torch.cat([c, c]).to(device) for c in conditions]
    f = base.vae_scale_factor
    channels = base.unet.config.in_channels
    g = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((n, channels, resolution // f, resolution // f), generator=g).to(device)
    latents = latents * scheduler.init_noise_sigma
    method.train(False)
    try:
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            with autocast():
                pred = method.predict(inp, t, ehs, added, conds).float()
            u, c = pred.chunk(2)
            latents = scheduler.step(u + guidance_scale * (c - u), t, latents).prev_sample
        vae = base.vae
        scaled = latents / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            scaled = scaled + vae.config.shift_factor
        with autocast():
            images = vae.decode(scaled.to(vae.dtype)).sample.float()
    finally:
        method.train(True)
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in images]
