"""Write a tiny SD 1.5 pipeline as one original-format (LDM) `.safetensors` checkpoint.

The inverse of diffusers' single-file conversion, with the layout of diffusers'
convert_diffusers_to_original_stable_diffusion.py script and its loops sized
from the configs, so `from_single_file` can be tested on the tiny models.
"""

from __future__ import annotations

from safetensors.torch import save_file
from diffusers import StableDiffusionPipeline


def unet_to_ldm(unet):
    sd = unet.state_dict()
    cfg = unet.config
    lpb = cfg.layers_per_block
    m = {
        "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    }
    n = len(cfg.block_out_channels)
    for i in range(n):
        for j in range(lpb):
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{(lpb + 1) * i + j + 1}.0"
            m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{(lpb + 1) * i + j + 1}.1"
        for j in range(lpb + 1):
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{(lpb + 1) * i + j}.0"
            m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{(lpb + 1) * i + j}.1"
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(lpb + 1) * (i + 1)}.0.op"
            has_attn = "CrossAttn" in cfg.up_block_types[i]
            m[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{(lpb + 1) * i + lpb}.{2 if has_attn else 1}"
    m["mid_block.attentions.0"] = "middle_block.1"
    for j in range(2):
        m[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
    out = {}
    for k, v in sd.items():
        prefix = max((p for p in m if k.startswith(p + ".")), key=len)
        rest = k[len(prefix) + 1:]
        if ".resnets." in prefix:
            first, _, tail = rest.partition(".")
            rest = res[first] + "." + tail
        out["model.diffusion_model." + m[prefix] + "." + rest] = v
    return out


def vae_to_ldm(vae):
    sd = vae.state_dict()
    cfg = vae.config
    n, lpb = len(cfg.block_out_channels), cfg.layers_per_block
    m = {"encoder.conv_in": "encoder.conv_in", "encoder.conv_out": "encoder.conv_out",
         "encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_in": "decoder.conv_in",
         "decoder.conv_out": "decoder.conv_out", "decoder.conv_norm_out": "decoder.norm_out",
         "quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for i in range(n):
        for j in range(lpb):
            m[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
            m[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{n - 1 - i}.upsample"
        for j in range(lpb + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
    for part in ("encoder", "decoder"):
        for j in range(2):
            m[f"{part}.mid_block.resnets.{j}"] = f"{part}.mid.block_{j + 1}"
        m[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    res = {"conv_shortcut": "nin_shortcut"}
    out = {}
    for k, v in sd.items():
        prefix = max((p for p in m if k.startswith(p + ".")), key=len)
        rest = k[len(prefix) + 1:]
        if "attentions" in prefix:
            first, _, tail = rest.rpartition(".")
            rest = attn[first] + "." + tail
            if first in ("to_q", "to_k", "to_v", "to_out.0") and v.ndim == 2:
                v = v[:, :, None, None]
        elif "resnets" in prefix:
            first, _, tail = rest.partition(".")
            rest = res.get(first, first) + "." + tail
        out["first_stage_model." + m[prefix] + "." + rest] = v
    return out


def to_single_file(folder, path):
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    sd = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    sd.update({"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
               for k, v in pipe.text_encoder.state_dict().items()})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return pipe

