"""Tuner files and configs: save / load round trips, and one-line errors for files and settings that do
not fit."""

from __future__ import annotations

import json

import pytest
import torch

from scedit_cli.errors import SceditError
from scedit_cli.tuners import CSCTuner, CSCTunerConfig, SCTuner, SCTunerConfig, SkipLayout, load_tuner, save_tuner
from tiny_models import randomize_


def _csc(layout, seed=0, hint_kernel=3):
    torch.manual_seed(seed)
    return randomize_(CSCTuner(CSCTunerConfig(hint_downscale=1, hint_kernel=hint_kernel), layout), seed, scale=0.05)


@pytest.mark.parametrize("method", ["sc", "csc"])
def test_save_load_round_trip_is_exact(tmp_path, tiny_unet, method):
    layout = SkipLayout.from_unet(tiny_unet)
    if method == "sc":
        tuner = SCTuner(SCTunerConfig(ratio=2, skips=[0, 3, 11], op="conv1x1"), layout)
        randomize_(tuner, 0, scale=0.05)
    else:
        tuner = _csc(layout, hint_kernel=1)
    save_tuner(tuner, tmp_path / "t", base="tiny")
    meta = json.loads((tmp_path / "t" / "tuner_config.json").read_text())
    assert meta["method"] == method and meta["layout"]["fingerprint"] == layout.fingerprint()
    assert meta["trainable_parameters"] == tuner.trainable_parameters
    for path in (tmp_path / "t", tmp_path / "t" / "tuner.safetensors"):
        loaded = load_tuner(path, unet=tiny_unet)
        assert type(loaded) is type(tuner) and loaded.config == tuner.config
        for k, v in tuner.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v)
    assert not list((tmp_path / "t").glob("*.tmp"))


def test_load_onto_mismatched_unet_fails_clearly(tmp_path, tiny_unet, tiny_sdxl_unet):
    save_tuner(SCTuner(SCTunerConfig(), SkipLayout.from_unet(tiny_unet)), tmp_path / "t", base="tiny-sd15")
    with pytest.raises(SceditError, match=r"12 skips.*9 skips.*tiny-sd15"):
        load_tuner(tmp_path / "t", unet=tiny_sdxl_unet)


def test_bad_tuner_files_are_clear_errors(tmp_path, tiny_unet):
    with pytest.raises(SceditError, match="not found"):
        load_tuner(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SceditError, match="not a readable safetensors"):
        load_tuner(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(SceditError, match="scedit convert"):
        load_tuner(tmp_path / "plain.safetensors")
    # A weight file whose tensors do not fit its config.
    save_tuner(SCTuner(SCTunerConfig(), SkipLayout.from_unet(tiny_unet)), tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "tuner_config.json").read_text())
    cfg["config"]["ratio"] = 2
    (tmp_path / "t" / "tuner_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SceditError, match="has shape"):
        load_tuner(tmp_path / "t")


def test_bad_configs_are_clear_errors(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    with pytest.raises(SceditError, match="skips: index 12 out of range"):
        SCTuner(SCTunerConfig(skips=[12]), layout)
    with pytest.raises(SceditError, match="unknown tuner op"):
        SCTuner(SCTunerConfig(op="mlp"), layout)
    with pytest.raises(SceditError, match="hint_kernel"):
        CSCTuner(CSCTunerConfig(hint_kernel=2), layout)
    with pytest.raises(SceditError, match="unknown sc tuner setting"):
        SCTunerConfig.from_dict({"ratio": 1, "rank": 4})
