"""Learned detectors through their real loaders, with weight files the tests make.

The files have the real names, key layouts and tensor shapes (ControlNet's
annotator checkpoints; a transformers UperNet folder), with random values.
HED and seg are small enough to build in full. MiDaS DPT-Hybrid (123M params)
and OpenPose (body+hand+face, ~90M) are written with stride-0 tensors (a
random row broadcast to the full shape) so the files stay tiny, but building
and running those architectures on CPU took 64 s on this (shared, loaded) 2-core machine,
so their test runs only with SCEDIT_SLOW_TESTS=1.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from scedit_cli.conditions import compute_condition
from scedit_cli.conditions.palette import ADE20K_PALETTE
from scedit_cli.errors import SceditError
from scedit_cli.prepare.runner import PrepareConfig, run_prepare

IMG = Image.fromarray(skimage.data.astronaut()).resize((200, 160))


def _controlnet_aux(module: str):
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"controlnet_aux.{module}")


@pytest.fixture(scope="module")
def hed_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(_controlnet_aux("hed").ControlNetHED_Apache2().state_dict(), folder / "ControlNetHED.pth")
    return folder


def test_hed_loads_real_format_weights_and_maps_at_image_size(hed_weights):
    out = compute_condition("hed", IMG, weights=hed_weights, device="cpu", params={"detect_resolution": 128})
    arr = np.asarray(out)
    assert out.mode == "RGB" and out.size == IMG.size and arr.std() > 0


def test_missing_weights_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(SceditError, match=r"'hed' needs ControlNetHED.pth from https://huggingface.co/lllyasviel/Annotators .*--weights"):
        compute_condition("hed", IMG)  # offline, empty HF cache
    with pytest.raises(SceditError, match=r"'depth' needs dpt_hybrid-midas-501f0c75.pt .* not in " + str(tmp_path)):
        compute_condition("depth", IMG, weights=tmp_path)
    with pytest.raises(SceditError, match=r"'pose' needs body_pose_model.pth"):
        compute_condition("pose", IMG, weights=tmp_path)
    with pytest.raises(SceditError, match=r"'seg' needs config.json from https://huggingface.co/openmmlab/upernet-convnext-small"):
        compute_condition("seg", IMG, weights=tmp_path)
    (tmp_path / "ControlNetHED.pth").write_bytes(b"garbage")
    with pytest.raises(SceditError, match="cannot load 'hed' weights"):
        compute_condition("hed", IMG, weights=tmp_path, device="cpu")
    # the CLI runner checks weights before writing anything
    src = tmp_path / "in"
    src.mkdir()
    IMG.save(src / "a.png")
    with pytest.raises(SceditError, match="'pose' needs body_pose_model.pth"):
        run_prepare(PrepareConfig("pose", str(src), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_seg_upernet_folder_batched_and_coloured_with_ade20k(tmp_path):
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    folder = tmp_path / "w" / "upernet-convnext-small"
    cfg = UperNetConfig(
        backbone_config=ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]),
        hidden_size=16, auxiliary_in_channels=32, auxiliary_channels=8, num_labels=150,
    )
    torch.manual_seed(0)
    UperNetForSemanticSegmentation(cfg).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "upernet"
    src = tmp_path / "in"
    src.mkdir()
    for i, fn in enumerate([skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea]):
        Image.fromarray(fn()).save(src / f"{i}.png")
    summary = run_prepare(PrepareConfig("seg", str(src), tmp_path / "out", weights=tmp_path / "w", device="cpu", batch_size=2, params={"detect_resolution": 64}))
    assert summary.rows_out == 3
    rows = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    palette = {tuple(c) for c in ADE20K_PALETTE}
    for row in rows:
        seg = np.asarray(Image.open(tmp_path / "out" / row["seg"]))
        assert seg.shape[:2] == np.asarray(Image.open(tmp_path / "out" / row["image"])).shape[:2]
        assert {tuple(c) for c in np.unique(seg.reshape(-1, 3), axis=0)} <= palette


def _strided(sd, strip_first=False):
    """Same keys/shapes as `sd`, tiny on disk: big tensors are one random row broadcast (stride 0)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, v in sd.items():
        key = k.split(".", 1)[1] if strip_first else k  # OpenPose checkpoints lack the first key component
        if not v.dtype.is_floating_point:
            out[key] = torch.zeros(v.shape, dtype=v.dtype)
        elif v.numel() <= 4096:
            out[key] = torch.randn(v.shape, generator=g) * 0.1
        else:
            out[key] = (torch.randn(v.shape[-1], generator=g) * 0.05).expand(v.shape)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SCEDIT_SLOW_TESTS"), reason="builds MiDaS DPT-Hybrid and OpenPose on CPU (~1 min); set SCEDIT_SLOW_TESTS=1")
def test_depth_and_pose_load_real_format_checkpoints(tmp_path):
    midas = _controlnet_aux("midas.api")
    body, hand, face = _controlnet_aux("open_pose.body"), _controlnet_aux("open_pose.hand"), _controlnet_aux("open_pose.face")
    with torch.device("meta"):  # shapes and keys only
        dpt = midas.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
        models = body.bodypose_model(), hand.handpose_model(), face.FaceNet()
    torch.save(_strided(dpt.state_dict()), tmp_path / "dpt_hybrid-midas-501f0c75.pt")
    torch.save(_strided(models[0].state_dict(), strip_first=True), tmp_path / "body_pose_model.pth")
    torch.save(_strided(models[1].state_dict(), strip_first=True), tmp_path / "hand_pose_model.pth")
    torch.save(_strided(models[2].state_dict()), tmp_path / "facenet.pth")
    for name in ("depth", "pose"):
        out = compute_condition(name, IMG, weights=tmp_path, device="cpu", params={"detect_resolution": 128})
        assert out.mode == "RGB" and out.size == IMG.size
