"""`scedit_cli.apply_tuners`: the README's "Use in diffusers" snippet, run as it is on the toy base, gives
`scedit sample`'s image; img2img, inpainting and SDXL pipelines; weights, conditions and remove()."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import scedit_cli
from scedit_cli.errors import SceditError
from scedit_cli.models import BaseModel
from scedit_cli.sampling import ControlSpec, SampleSettings, sample
from scedit_cli.sampling.controls import load_control_map, map_to_tensor
from scedit_cli.toy import base_model_path
from scedit_cli.tuners import (CSCTuner, CSCTunerConfig, SCTuner, SCTunerConfig, SkipLayout, attach, detach,
                              get_editor, save_tuner)
from tiny_models import make_tiny_pipeline, randomize_

README = Path(__file__).resolve().parents[1] / "README.md"
PROMPT = "a red circle at the top left on a black background in <sce> style"



def _tuners(unet, vae_factor: int, folder: Path) -> dict[str, Path]:
    """A trained-looking (random, non-zero) SC-Tuner and canny CSC-Tuner for `unet`, saved in `folder`."""
    layout = SkipLayout.from_unet(unet)
    sc = randomize_(SCTuner(SCTunerConfig(ratio=2), layout), 1)
    canny = randomize_(CSCTuner(CSCTunerConfig(condition="canny", hint_kernel=1, hint_downscale=vae_factor), layout), 2)
    return {"sc": save_tuner(sc, folder / "style" / "tuner"), "canny": save_tuner(canny, folder / "canny" / "tuner")}


def _edge_map(path: Path, size=(32, 32), seed=0) -> Path:
    arr = (np.random.default_rng(seed).random((*size, 3)) > 0.7).astype(np.uint8) * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def readme_snippet() -> str:
    section = README.read_text().split("## Use in diffusers", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_equals_scedit_sample_and_remove_restores_the_base(tmp_path, monkeypatch):
    # The files `scedit quickstart` would have written, relative to the working folder.
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "scedit-quickstart" / "runs"
    edges = _edge_map(tmp_path / "scedit-quickstart" / "eval" / "canny" / "00.png")
    from diffusers import UNet2DConditionModel

    toy_unet = UNet2DConditionModel.from_pretrained(base_model_path(), subfolder="unet")
    paths = _tuners(toy_unet, 4, runs)

    ns: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), ns)  # exactly the README's code
    pipe, image = ns["pipe"], np.asarray(ns["image"])
    assert image.shape == (32, 32, 3)

    base = BaseModel.from_pipeline(pipe, str(base_model_path()))
    settings = SampleSettings(steps=25, seeds=(0,))
    tuned = sample(base, PROMPT, tmp_path / "tuned", tuners=[paths["sc"], paths["canny"]],
                   controls=[ControlSpec("canny", edges, 1.0, is_map=True)], settings=settings)
    assert np.array_equal(image, _png(tuned.images[0])), "apply_tuners gives scedit sample's image"
    # handle.remove() left no editor and no hook (pixel-exact restoration: test_weights_conditions_and_errors)
    assert get_editor(pipe.unet) is None and not pipe.unet._forward_pre_hooks
    assert not any(b._forward_pre_hooks for b in pipe.unet.up_blocks)
    assert all(p.requires_grad for p in pipe.unet.parameters()), "the U-Net's requires_grad flags are back"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("toy")
    pipe = StableDiffusionPipeline.from_pretrained(base_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe, _tuners(pipe.unet, 4, root), root


def _call(pipe, **kw):
    kw.setdefault("prompt", PROMPT)
    kw.setdefault("num_inference_steps", 3)
    return np.asarray(pipe(generator=torch.Generator().manual_seed(7), **kw).images[0]).astype(int)


def _manual(pipe, tuners, cond: torch.Tensor | None, **kw) -> np.ndarray:
    """The same call with the tuners attached by hand and the condition tensor given directly."""
    from scedit_cli.tuners import load_tuner

    loaded = [load_tuner(t) for t in tuners]
    for t in loaded:
        if isinstance(t, CSCTuner):
            t.set_condition(cond)
    attach(pipe.unet, loaded)
    try:
        return _call(pipe, **kw)
    finally:
        detach(pipe.unet)


def test_img2img_and_inpainting_pipelines_from_the_same_components(toy, tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    pipe, paths, _ = toy
    photo = Image.fromarray((np.random.default_rng(3).random((48, 40, 3)) * 255).astype(np.uint8))
    init = Image.fromarray((np.random.default_rng(4).random((40, 48, 3)) * 255).astype(np.uint8))  # 48 wide, 40 high
    mask = Image.fromarray(((np.mgrid[:40, :48][1] > 24) * 255).astype(np.uint8))
    # Condition maps are made at the size being generated: here the init image's, 48x40, not the default 32x32.
    cond = map_to_tensor(load_control_map(ControlSpec("canny", _save(photo, tmp_path / "photo.png")), 48, 40))
    tuners = [paths["sc"], paths["canny"]]
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    # The toy U-Net takes 4 latent channels: diffusers runs StableDiffusionInpaintPipeline as "legacy"
    # inpainting then (the known region re-noised from the image at every step).
    inpaint = StableDiffusionInpaintPipeline(**pipe.components)
    for p, kw in ((img2img, {"image": init, "strength": 0.9}),
                  (inpaint, {"image": init, "mask_image": mask, "height": 40, "width": 48, "strength": 0.9})):
        plain = _call(p, **kw)
        handle = scedit_cli.apply_tuners(p, tuners, conditions={"canny": photo})
        tuned = _call(p, **kw)
        handle.remove()
        assert tuned.shape == (40, 48, 3) and np.abs(tuned - plain).max() > 10, type(p).__name__
        assert np.array_equal(tuned, _manual(p, tuners, cond, **kw)), type(p).__name__
        assert np.array_equal(_call(p, **kw), plain), type(p).__name__


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_weights_conditions_and_errors(toy, tmp_path):
    pipe, paths, _ = toy
    plain = _call(pipe)
    edges = Image.open(_edge_map(tmp_path / "edges.png"))
    with scedit_cli.apply_tuners(pipe, [paths["sc"], paths["canny"]], maps={"canny": edges}) as handle:
        assert handle.weights == [1.0, 1.0]
        both = _call(pipe)
        handle.set_weights([0.0, 3.0], control_scale=0.0)  # SC off; the CSC weight normalised to 1, times 0
        assert handle.weights == [0.0, 0.0] and np.array_equal(_call(pipe), plain)
        handle.set_weights([1.0, 1.0], control_scale=1.0)
        assert np.array_equal(_call(pipe), both)
        # a tensor map at the generated size is used as it is: the same map as a tensor, the same image
        handle.set_condition("canny", map_to_tensor(edges.convert("RGB"))[0])
        assert np.array_equal(_call(pipe), both)
        with pytest.raises(SceditError, match=r"tensor of size \(16, 16\) but the image being generated is 32x32"):
            handle.set_condition("canny", torch.zeros(1, 3, 16, 16))
            _call(pipe)
        with pytest.raises(SceditError, match="condition 'depth': no CSC-Tuner trained for it"):
            handle.set_condition("depth", edges)
        with pytest.raises(SceditError, match="2 tuner"):
            handle.set_weights([1.0])
        with pytest.raises(SceditError, match="already has SCEdit tuners: call remove"):
            scedit_cli.apply_tuners(pipe, paths["sc"])
    assert np.array_equal(_call(pipe), plain), "leaving the with block removes the tuners"
    handle = scedit_cli.apply_tuners(pipe, [paths["canny"]])
    try:
        with pytest.raises(SceditError) as e:
            _call(pipe)
        assert "no condition image: pass conditions={'canny': image}" in str(e.value) and "\n" not in str(e.value)
    finally:
        handle.remove()
    with pytest.raises(SceditError, match="nobody/nothing"):
        scedit_cli.apply_tuners(pipe, ["nobody/nothing"])
    assert np.array_equal(_call(pipe), plain)


def test_sdxl_pipeline_with_a_raw_photo_equals_scedit_sample(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    make_tiny_pipeline(tmp_path / "sdxl", "sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl")
    pipe.set_progress_bar_config(disable=True)
    paths = _tuners(pipe.unet, 2, tmp_path)
    photo = _save(Image.fromarray((np.random.default_rng(5).random((40, 40, 3)) * 255).astype(np.uint8)),
                  tmp_path / "photo.png")
    handle = scedit_cli.apply_tuners(pipe, [paths["sc"], paths["canny"]], conditions={"canny": photo})
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    handle.remove()
    r = sample(BaseModel.from_pipeline(pipe, str(tmp_path / "sdxl")), "a red circle", tmp_path / "out",
               tuners=[paths["sc"], paths["canny"]], controls=[ControlSpec("canny", photo)],
               settings=SampleSettings(steps=2, seeds=(0,), guidance_scale=5.0))  # SDXL pipelines' default CFG
    assert np.array_equal(np.asarray(image), _png(r.images[0]))


def test_import_stays_cheap():
    import subprocess
    import sys

    code = "import sys, scedit_cli; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], "apply_tuners is imported lazily"
    assert callable(scedit_cli.apply_tuners)
