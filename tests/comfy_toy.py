"""The ComfyUI tests' toy: the shipped toy base, random SC / canny / colour tuners, condition maps, and
text-to-image through tests/comfy_double.py's double of ComfyUI's U-Net loop."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_double import apply_model, comfy_model
from tiny_models import randomize_
from scedit_cli.comfyui import NODE_CLASS_MAPPINGS
from scedit_cli.sampling import SampleSettings, load_model, make_scheduler
from scedit_cli.toy import base_model_path
from scedit_cli.tuners import CSCTuner, CSCTunerConfig, SCTuner, SCTunerConfig, SkipLayout, save_tuner

STEPS, CFG, PROMPT = 3, 7.5, "a red circle on a blue background"
Tuner, Control = NODE_CLASS_MAPPINGS["SCEditTuner"](), NODE_CLASS_MAPPINGS["SCEditControl"]()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The shipped toy base (fp32, CPU), random non-zero SC / canny / color tuners, two condition maps."""
    root = tmp_path_factory.mktemp("comfy")
    base = load_model(str(base_model_path()), "cpu", "fp32")
    base.pipeline.set_progress_bar_config(disable=True)
    layout = SkipLayout.from_unet(base.unet)
    f = base.vae_scale_factor
    paths = {"sc": save_tuner(randomize_(SCTuner(SCTunerConfig(ratio=2), layout), 1), root / "sc", base="toy")}
    for seed, cond in ((2, "canny"), (3, "color")):
        t = CSCTuner(CSCTunerConfig(hint_downscale=f, hint_kernel=1, condition=cond), layout)
        paths[cond] = save_tuner(randomize_(t, seed), root / cond, base="toy")
    rng = np.random.default_rng(0)
    maps = {}
    for name in ("canny", "color"):
        maps[name] = root / f"{name}.png"
        Image.fromarray((rng.random((32, 32, 3)) > 0.5).astype(np.uint8) * 255).save(maps[name])
    return SimpleNamespace(root=root, base=base, layout=layout, paths={k: str(v) for k, v in paths.items()}, maps=maps)


def toy_model(toy, clone_mode="nested"):
    return comfy_model(toy.base.unet, toy.base.pipeline.scheduler.config, 64, toy.base.vae_scale_factor, clone_mode)


def load_image(path) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, C) in [0, 1], as LoadImage makes it."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)[None]


def comfy_sample(toy, model, seed=0) -> np.ndarray:
    """Text-to-image through the ComfyUI U-Net double: the same scheduler, CFG and VAE decode as diffusers,
    cond and uncond in one batch labelled [0, 1] as ComfyUI's calc_cond_batch labels them."""
    pipe = toy.base.pipeline
    sched = make_scheduler("ddim", pipe.scheduler)
    sched.set_timesteps(STEPS)
    f = toy.base.vae_scale_factor
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True)
        g = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((1, 4, 32 // f, 32 // f), generator=g) * sched.init_noise_sigma
        context = torch.cat([cond, uncond])
        for t in sched.timesteps:
            x = sched.scale_model_input(torch.cat([latents, latents]), t)
            e_cond, e_uncond = apply_model(model, x, t, context, [0, 1]).chunk(2)
            latents = sched.step(e_uncond + CFG * (e_cond - e_uncond), t, latents).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        arr = pipe.image_processor.postprocess(image, output_type="np")[0]
    return (arr * 255).round().astype(np.int16)


def png_pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def sample_settings():
    return SampleSettings(steps=STEPS, scheduler="ddim", guidance_scale=CFG, seeds=(0,), grid_max=0)

def toy_inputs(toy, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 20, 64, generator=g)
