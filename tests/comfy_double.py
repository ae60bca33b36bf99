"""A test double of the parts of ComfyUI the scedit nodes meet, written from ComfyUI's source.

CI has no ComfyUI, so this models, from comfyanonymous/ComfyUI:
- `comfy/model_patcher.py`: `ModelPatcher.clone()` (model_options copied with
  `patcher_extension.copy_nested_dicts`: dicts copied recursively, lists shallow-copied; older versions
  `copy.deepcopy` them), `set_model_patch` / `set_model_output_block_patch` (a new list each time);
- `comfy/model_sampling.py`: `ModelSamplingDiscrete` (sigmas from alphas_cumprod, log-linear `sigma(t)`,
  `percent_to_sigma`);
- `comfy/ldm/modules/diffusionmodules/openaimodel.py`: `UNetModel.forward`: input blocks push every skip
  on `hs`, the middle block, then for each output block `id`: `transformer_options["block"] =
  ("output", id)`, `hsp = hs.pop()`, ControlNet residuals added (`apply_control`), every
  `output_block_patch` called as `h, hsp = p(h, hsp, transformer_options)`, `h = cat([h, hsp])`, the
  block (resnet, attention, upsampler with `output_shape = hs[-1].shape`).

The U-Net double runs that loop over the modules of a real diffusers `UNet2DConditionModel` (SD 1.x
layout, as `scedit sample` runs it), so its numbers are diffusers' and only the loop is ComfyUI's.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from torch import nn


def copy_nested_dicts(d: dict) -> dict:
    out = d.copy()
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = copy_nested_dicts(v)
        elif isinstance(v, list):
            out[k] = v.copy()
    return out


class ModelPatcher:
    def __init__(self, model, clone_mode: str = "nested"):
        self.model = model
        self.model_options = {"transformer_options": {}}
        self.clone_mode = clone_mode  # "nested": ComfyUI today; "deepcopy": older ComfyUI

    def clone(self):
        n = ModelPatcher(self.model, self.clone_mode)
        n.model_options = (copy_nested_dicts(self.model_options) if self.clone_mode == "nested"
                           else copy.deepcopy(self.model_options))
        return n

    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"]
        if "patches" not in to:
            to["patches"] = {}
        to["patches"][name] = to["patches"].get(name, []) + [patch]

    def set_model_output_block_patch(self, patch):
        self.set_model_patch(patch, "output_block_patch")


class ModelSamplingDiscrete:
    def __init__(self, alphas_cumprod: torch.Tensor):
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def sigma(self, timestep):
        t = torch.clamp(torch.as_tensor(timestep).float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class ComfyUNet(nn.Module):
    """ComfyUI's UNetModel loop over a diffusers U-Net's modules (SD 1.x / 2.x layout: no added embeddings)."""

    def __init__(self, unet):
        super().__init__()
        cfg = unet.config
        assert cfg.addition_embed_type is None and cfg.class_embed_type is None
        self.unet = unet
        self.model_channels = cfg.block_out_channels[0]
        self.channel_mult = [c // self.model_channels for c in cfg.block_out_channels]
        self.num_res_blocks = [cfg.layers_per_block] * len(cfg.block_out_channels)
        self.output_blocks = [(b, r) for b, block in enumerate(unet.up_blocks) for r in range(len(block.resnets))]

    def forward(self, x, timesteps, context, control=None, transformer_options={}):
        transformer_options["original_shape"] = list(x.shape)
        patches = transformer_options.get("patches", {})
        u = self.unet
        emb = u.time_embedding(u.get_time_embed(sample=x, timestep=timesteps))
        h = u.conv_in(x)
        hs = [h]
        for block in u.down_blocks:
            attns = getattr(block, "attentions", None)
            for i, resnet in enumerate(block.resnets):
                h = resnet(h, emb)
                if attns is not None:
                    h = attns[i](h, encoder_hidden_states=context, return_dict=False)[0]
                hs.append(h)
            for down in block.downsamplers or []:
                h = down(h)
                hs.append(h)
        h = u.mid_block(h, emb, encoder_hidden_states=context)
        for id, (b, r) in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", id)
            hsp = hs.pop()
            if control is not None and control.get("output"):
                hsp = hsp + control["output"].pop()
            for p in patches.get("output_block_patch", []):
                h, hsp = p(h, hsp, transformer_options)
            h = torch.cat([h, hsp], dim=1)
            block = u.up_blocks[b]
            h = block.resnets[r](h, emb)
            if getattr(block, "attentions", None) is not None:
                h = block.attentions[r](h, encoder_hidden_states=context, return_dict=False)[0]
            if r == len(block.resnets) - 1:
                for up in block.upsamplers or []:
                    h = up(h, hs[-1].shape[2:] if hs else None)
        return u.conv_out(u.conv_act(u.conv_norm_out(h)))


def comfy_model(unet, scheduler_config, context_dim: int, latent_factor: int, clone_mode: str = "nested"):
    """A ComfyUI MODEL (ModelPatcher over a BaseModel double) around a diffusers U-Net."""
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod
    base = SimpleNamespace(
        diffusion_model=ComfyUNet(unet),
        model_config=SimpleNamespace(unet_config={"context_dim": context_dim}),
        latent_format=SimpleNamespace(spacial_downscale_ratio=latent_factor),
        model_sampling=ModelSamplingDiscrete(alphas),
    )
    return ModelPatcher(base, clone_mode)


def apply_model(model: ModelPatcher, x, t, context, cond_or_uncond, control=None):
    """One U-Net call as ComfyUI's `calc_cond_batch` makes it: model_options' transformer_options,
    shallow-copied, plus the chunk labels and the current sigma."""
    sampling = model.model.model_sampling
    to = model.model_options["transformer_options"].copy()
    to["cond_or_uncond"] = list(cond_or_uncond)
    to["sigmas"] = sampling.sigma(t).reshape(1).expand(x.shape[0] // len(cond_or_uncond))
    ts = torch.as_tensor(t).reshape(1).expand(x.shape[0])
    return model.model.diffusion_model(x, ts, context, control=control, transformer_options=to)
