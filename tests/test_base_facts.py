"""Facts about a base model, each from one place: the meta-device base builder and prediction table
(`architectures`), the VAE factor (`models`), the architecture of a loaded base."""

from __future__ import annotations

import shutil

from scedit_cli.architectures import PREDICTION, arch_of, meta_base, pipeline_configs
from scedit_cli.models import BaseModel, vae_scale_factor
from scedit_cli.toy import base_model_path
from tiny_models import make_tiny_unet


def test_meta_base_from_a_local_pipeline_folder():
    base, where = meta_base(str(base_model_path()), "sd15")
    assert where == "model configuration" and next(base.unet.parameters()).is_meta
    # the toy base's VAE has 3 blocks: 4 px per latent cell, read from its config, not assumed
    assert base.vae_scale_factor == 4 and base.prediction_type == "epsilon" and not base.is_sdxl


def test_meta_base_falls_back_to_the_published_architecture(tmp_path):
    partial = tmp_path / "model"
    shutil.copytree(base_model_path() / "unet", partial / "unet")  # no scheduler / vae / index: not enough
    assert set(pipeline_configs(str(partial))) == {"unet"}
    base, where = meta_base(str(partial), "sd21")
    assert where.startswith("published sd21") and base.prediction_type == PREDICTION["sd21"] == "v_prediction"
    assert meta_base(str(partial), "sd21-base")[0].prediction_type == "epsilon"
    assert base.unet.config.cross_attention_dim == 1024 and base.vae_scale_factor == 8
    assert meta_base(str(partial), None) is None


def test_arch_of_and_vae_factor():
    assert arch_of(BaseModel.from_unet(make_tiny_unet("sd15"))) == "sd15"
    assert arch_of(BaseModel.from_unet(make_tiny_unet("sdxl"))) == "sdxl"
    assert vae_scale_factor({"block_out_channels": [128, 256, 512, 512]}) == 8
