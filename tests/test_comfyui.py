"""ComfyUI nodes: the same images as `scedit sample` / `compose` inside a double of ComfyUI's U-Net loop
(tests/comfy_double.py), the node contracts, CFG batching, start/end percent, clones, other patches,
dtypes, errors, on-load conversion, `scedit comfyui install` and the example workflows."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_double import ModelSamplingDiscrete, apply_model, comfy_model
from hub_helpers import add_to_cache, hf_cache  # noqa: F401  (hf_cache: a fixture)
from tiny_models import randomize_
from scedit_cli.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from scedit_cli.comfyui import model as comfy_info
from scedit_cli.comfyui.hints import fit_hint
from scedit_cli.comfyui.install import install
from scedit_cli.comfyui.loader import FOLDER
from scedit_cli.comfyui.patch import STATE_KEY, entries_of, output_block_patch, weights_at
from scedit_cli.errors import SceditError
from scedit_cli.sampling import ControlSpec, SampleSettings, compose, load_model, make_scheduler, sample
from scedit_cli.toy import base_model_path
from scedit_cli.tuners import (CSCTuner, CSCTunerConfig, SCTuner, SCTunerConfig, SkipLayout, attach, detach, load_tuner,
                               save_tuner)

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


def _model(toy, clone_mode="nested"):
    return comfy_model(toy.base.unet, toy.base.pipeline.scheduler.config, 64, toy.base.vae_scale_factor, clone_mode)


def _image(path) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, C) in [0, 1], as LoadImage makes it."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)[None]


def _comfy_sample(toy, model, seed=0) -> np.ndarray:
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


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def _settings():
    return SampleSettings(steps=STEPS, scheduler="ddim", guidance_scale=CFG, seeds=(0,), grid_max=0)


def test_sc_tuner_node_gives_scedit_sample_images(toy, tmp_path):
    want = _png(sample(toy.base, PROMPT, tmp_path, tuners=[toy.paths["sc"]], settings=_settings()).images[0])
    plain = _comfy_sample(toy, _model(toy))
    got = _comfy_sample(toy, Tuner.apply(_model(toy), toy.paths["sc"], 1.0)[0])
    assert np.abs(got - plain).max() > 20  # the tuner changes the image
    assert np.abs(got - want).max() <= 1


def test_control_node_gives_scedit_sample_images(toy, tmp_path):
    spec = ControlSpec("canny", toy.maps["canny"], 1.0, is_map=True)
    res = sample(toy.base, PROMPT, tmp_path, tuners=[toy.paths["canny"]], controls=[spec], settings=_settings())
    model = Control.apply(_model(toy), toy.paths["canny"], _image(toy.maps["canny"]), 1.0, 0.0, 1.0)[0]
    got = _comfy_sample(toy, model)
    assert np.abs(got - _comfy_sample(toy, _model(toy))).max() > 20
    assert np.abs(got - _png(res.images[0])).max() <= 1


def test_sc_and_two_controls_stack_like_scedit_compose(toy, tmp_path):
    """SCEdit Tuner -> Control(canny, 1) -> Control(color, .5) == compose with weights (1, .5) (Eq. 7)."""
    controls = [ControlSpec("canny", toy.maps["canny"], 1.0, is_map=True),
                ControlSpec("color", toy.maps["color"], 0.5, is_map=True)]
    res = compose(toy.base, PROMPT, tmp_path, [toy.paths[k] for k in ("sc", "canny", "color")], controls,
                  settings=_settings())
    m = Tuner.apply(_model(toy), toy.paths["sc"], 1.0)[0]
    m = Control.apply(m, toy.paths["canny"], _image(toy.maps["canny"]), 1.0, 0.0, 1.0)[0]
    m = Control.apply(m, toy.paths["color"], _image(toy.maps["color"]), 0.5, 0.0, 1.0)[0]
    assert [w for _, w in weights_at(entries_of(m), {})] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert np.abs(_comfy_sample(toy, m) - _png(res.images[0])).max() <= 1


# --- ComfyUI's model, the patch and its state ----------------------------------------------------------


@pytest.mark.parametrize("arch, mult", [("sd15", (1, 2, 4, 4)), ("sdxl", (1, 2, 4))])
def test_layout_read_from_comfy_unet_is_scedits(arch, mult):
    from scedit_cli.architectures import build_unet

    unet = SimpleNamespace(model_channels=320, channel_mult=mult, num_res_blocks=[2] * len(mult),
                           output_blocks=[None] * (3 * len(mult)))
    layout = comfy_info.skip_layout(SimpleNamespace(model=SimpleNamespace(diffusion_model=unet)))
    assert layout == SkipLayout.from_unet(build_unet(arch))
    assert layout.num_skips == (9 if arch == "sdxl" else 12)


def test_layout_of_the_toy_double_and_non_unet_models(toy):
    assert comfy_info.skip_layout(_model(toy)) == toy.layout
    flux = SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(1, 1)))
    with pytest.raises(SceditError, match="Linear, which has no U-Net skip connections"):
        comfy_info.skip_layout(flux)


def test_node_contracts():
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS) == {"SCEditTuner", "SCEditControl"}
    expected = {"SCEditTuner": {"model": "MODEL", "tuner": "STRING", "strength": "FLOAT"},
                "SCEditControl": {"model": "MODEL", "tuner": "STRING", "image": "IMAGE", "strength": "FLOAT",
                                  "start_percent": "FLOAT", "end_percent": "FLOAT"}}
    for key, cls in NODE_CLASS_MAPPINGS.items():
        required = cls.INPUT_TYPES()["required"]
        assert {k: v[0] for k, v in required.items()} == expected[key]
        assert cls.RETURN_TYPES == ("MODEL",) and cls.CATEGORY == "scedit"
        optional = cls.INPUT_TYPES()["optional"]
        assert {k: v[0] for k, v in optional.items()} == {"hub_id": "STRING"}
        params = __import__("inspect").signature(getattr(cls, cls.FUNCTION)).parameters
        assert list(params) == ["self", *required, *optional]  # ComfyUI calls FUNCTION with the inputs as keywords
        assert params["hub_id"].default == ""  # an optional input ComfyUI may leave out
        for name, (kind, *opts) in required.items():
            if kind == "FLOAT":
                o = opts[0]
                assert o["min"] <= o["default"] <= o["max"]
    control = NODE_CLASS_MAPPINGS["SCEditControl"].INPUT_TYPES()["required"]
    assert (control["start_percent"][1]["min"], control["end_percent"][1]["max"]) == (0.0, 1.0)


def _fake_folder_paths(models_dir):
    """ComfyUI's folder_paths, reduced to what the nodes call (written from its source)."""
    import os
    import types

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.folder_names_and_paths = {}

    def get_filename_list(name):
        folders, exts = fp.folder_names_and_paths[name]
        out = set()
        for folder in folders:
            for root, _, names in os.walk(folder):
                for n in names:
                    rel = os.path.relpath(os.path.join(root, n), folder)
                    if os.path.splitext(n)[1].lower() in exts:
                        out.add(rel)
        return sorted(out)

    def get_full_path(name, filename):
        for folder in fp.folder_names_and_paths[name][0]:
            full = os.path.join(folder, filename)
            if os.path.isfile(full):
                return full
        return None

    fp.get_filename_list, fp.get_full_path = get_filename_list, get_full_path
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])
    return fp


def test_tuners_are_listed_and_found_through_folder_paths(toy, tmp_path, monkeypatch):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(toy.paths["sc"], models / FOLDER / "my-style")
    (models / FOLDER / "notes.txt").write_text("not a tuner")
    monkeypatch.setitem(sys.modules, "folder_paths", _fake_folder_paths(models))
    choices = NODE_CLASS_MAPPINGS["SCEditTuner"].INPUT_TYPES()["required"]["tuner"][0]
    assert choices == ["my-style/tuner.safetensors"]
    m = Tuner.apply(_model(toy), "my-style/tuner.safetensors", 1.0)[0]
    assert entries_of(m)[0].name == "my-style/tuner.safetensors"
    with pytest.raises(SceditError, match="'gone.safetensors' not found in .*models/scedit"):
        Tuner.apply(_model(toy), "gone.safetensors", 1.0)


@pytest.mark.parametrize("clone_mode", ["nested", "deepcopy"])
def test_clones_share_no_mutable_state_and_one_patch_serves_all_nodes(toy, clone_mode):
    base = _model(toy, clone_mode)
    m1 = Tuner.apply(base, toy.paths["sc"], 1.0)[0]
    m2 = Control.apply(m1, toy.paths["canny"], _image(toy.maps["canny"]), 0.7, 0.0, 1.0)[0]
    assert base.model_options == {"transformer_options": {}}
    for m, n in ((m1, 1), (m2, 2)):
        assert m.model_options["transformer_options"]["patches"]["output_block_patch"] == [output_block_patch]
        assert len(entries_of(m)) == n
    assert entries_of(m2)[0] is entries_of(m1)[0]  # entries are shared, never copied (also by deepcopy)
    assert m1.model_options["transformer_options"][STATE_KEY] is not m2.model_options["transformer_options"][STATE_KEY]
    assert Tuner.apply(base, toy.paths["sc"], 0.0)[0] is base  # strength 0: the model as it was
    assert Control.apply(base, toy.paths["canny"], _image(toy.maps["canny"]), 0.0, 0.0, 1.0)[0] is base


def _inputs(toy, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 20, 64, generator=g)


def test_other_output_block_patches_keep_working(toy):
    """A FreeU-like patch before and after the SCEdit one: both run, in the graph's order."""
    from scedit_cli.tuners import load_tuner

    sc = load_tuner(toy.paths["sc"])

    def freeu(h, hsp, to):
        return h * 1.1, hsp * 0.9

    def manual(first_freeu):
        def patch(h, hsp, to):
            if first_freeu:
                h, hsp = freeu(h, hsp, to)
            hsp = hsp + sc.delta(toy.layout.decoder_to_encoder(to["block"][1]), hsp)
            return (h, hsp) if first_freeu else freeu(h, hsp, to)
        ref = _model(toy)
        ref.set_model_output_block_patch(patch)
        return ref

    x, ctx = _inputs(toy)
    with torch.no_grad():
        f = _model(toy)
        f.set_model_output_block_patch(freeu)
        freeu_then_sc = Tuner.apply(f, toy.paths["sc"], 1.0)[0]
        sc_then_freeu = Tuner.apply(_model(toy), toy.paths["sc"], 1.0)[0].clone()
        sc_then_freeu.set_model_output_block_patch(freeu)
        for model, first in ((freeu_then_sc, True), (sc_then_freeu, False)):
            got = apply_model(model, x, 500, ctx, [0, 1])
            torch.testing.assert_close(got, apply_model(manual(first), x, 500, ctx, [0, 1]), rtol=1e-5, atol=1e-5)


def test_controlnet_residuals_are_in_the_skip_the_tuner_edits(toy):
    """ComfyUI adds ControlNet residuals to hsp before the patch, as diffusers adds them before the up
    blocks: the double with residuals equals diffusers + `attach` with the same residuals."""
    from scedit_cli.tuners import load_tuner

    x, ctx = _inputs(toy)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        skips = [torch.randn(2, c, 8 // d, 8 // d, generator=g) * 0.5
                 for c, d in zip(toy.layout.channels, toy.layout.downscale)]
        mid = torch.zeros(2, toy.layout.channels[-1], 2, 2)
        unet = toy.base.unet
        attach(unet, load_tuner(toy.paths["sc"]))
        try:
            want = unet(x, 500, encoder_hidden_states=ctx, down_block_additional_residuals=tuple(skips),
                        mid_block_additional_residual=mid).sample
        finally:
            detach(unet)
        got = apply_model(Tuner.apply(_model(toy), toy.paths["sc"], 1.0)[0], x, 500, ctx, [0, 1],
                          control={"output": list(skips)})
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cfg_batch_and_image_batch_pair_like_controlnet(toy):
    """Batch [cond x2, uncond x2] with a 2-image IMAGE: latent i of each chunk gets image i."""
    imgs = torch.cat([_image(toy.maps["canny"]), _image(toy.maps["color"])])
    x, ctx = _inputs(toy, batch=4)
    with torch.no_grad():
        both = apply_model(Control.apply(_model(toy), toy.paths["canny"], imgs, 1.0, 0.0, 1.0)[0], x, 400, ctx, [0, 1])
        for i in range(2):
            one = Control.apply(_model(toy), toy.paths["canny"], imgs[i:i + 1], 1.0, 0.0, 1.0)[0]
            for chunk in range(2):
                k = 2 * chunk + i
                ref = apply_model(one, x[k:k + 1], 400, ctx[k:k + 1], [chunk])
                torch.testing.assert_close(both[k:k + 1], ref, rtol=1e-4, atol=1e-5)
        plain = apply_model(_model(toy), x, 400, ctx, [0, 1])
    assert (both - plain).abs().max() > 1e-2


def test_fused_terms_are_made_once_per_image_batch_and_reused_by_every_step(toy):
    """SC + two Controls (one with a 2-image IMAGE) run as one fused edit per skip; its plans, made on
    the first U-Net call, are the same objects on the next calls (the tiled hints keep their identity)."""
    imgs = torch.cat([_image(toy.maps["canny"]), _image(toy.maps["color"])])
    m = Tuner.apply(_model(toy), toy.paths["sc"], 1.0)[0]
    m = Control.apply(m, toy.paths["canny"], imgs, 1.0, 0.0, 1.0)[0]
    m = Control.apply(m, toy.paths["color"], _image(toy.maps["color"]), 0.5, 0.0, 1.0)[0]
    x, ctx = _inputs(toy, batch=4)
    plans = entries_of(m)[0].plans
    with torch.no_grad():
        first = apply_model(m, x, 400, ctx, [0, 1])
        made = {k: v[2] for k, v in plans.items()}
        again = apply_model(m, x, 300, ctx, [0, 1])
    assert len(made) == toy.layout.num_skips
    assert all(plans[k][2] is v for k, v in made.items())
    assert not torch.equal(first, again)


def test_start_end_percent_follow_controlnets_sigma_range(toy):
    x, ctx = _inputs(toy)
    img = _image(toy.maps["canny"])

    def run(start, end, t):
        return apply_model(Control.apply(_model(toy), toy.paths["canny"], img, 1.0, start, end)[0], x, t, ctx, [0, 1])

    with torch.no_grad():
        for t in (900, 100):  # high sigma: early in the schedule; low sigma: late
            full, plain = run(0.0, 1.0, t), apply_model(_model(toy), x, t, ctx, [0, 1])
            assert (full - plain).abs().max() > 1e-3
            early, late = run(0.0, 0.5, t), run(0.5, 1.0, t)
            on, off = (early, late) if t == 900 else (late, early)
            assert torch.equal(on, full) and torch.equal(off, plain)
    m = Control.apply(_model(toy), toy.paths["canny"], img, 1.0, 0.25, 0.75)[0]
    entry = entries_of(m)[0]
    for sampling in (m.model.model_sampling, ModelSamplingDiscrete(torch.linspace(0.99, 0.01, 1000))):
        # read while sampling: a model-sampling node later in the graph patches MODEL.model by then
        m.model.model_sampling = sampling
        assert entry.sigma_range() == (sampling.percent_to_sigma(0.25), sampling.percent_to_sigma(0.75))
    with pytest.raises(SceditError, match="start_percent 0.8 and end_percent 0.2"):
        Control.apply(_model(toy), toy.paths["canny"], img, 1.0, 0.8, 0.2)
    with pytest.raises(SceditError, match=r"sampler's current sigma"):
        entry.active({})


def test_eq7_weights_renormalise_over_the_controls_acting_now(toy):
    img = _image(toy.maps["canny"])
    m = Tuner.apply(_model(toy), toy.paths["sc"], 0.8)[0]
    m = Control.apply(m, toy.paths["canny"], img, 1.0, 0.0, 0.5)[0]
    m = Control.apply(m, toy.paths["color"], img, 0.5, 0.0, 1.0)[0]
    sampling = m.model.model_sampling
    high, low = ({"sigmas": sampling.sigma(torch.tensor(t)).reshape(1)} for t in (900.0, 100.0))
    assert [w for _, w in weights_at(entries_of(m), high)] == pytest.approx([0.8, 2 / 3, 1 / 3])
    assert [(e.name, w) for e, w in weights_at(entries_of(m), low)] == [(toy.paths["sc"], 0.8),
                                                                         (toy.paths["color"], 0.5)]


def test_tuners_follow_the_skip_dtype_and_leave_the_loaded_tuner_alone(toy):
    img = _image(toy.maps["canny"])
    entries = entries_of(Control.apply(Tuner.apply(_model(toy), toy.paths["sc"], 1.0)[0], toy.paths["canny"],
                                       img, 1.0, 0.0, 1.0)[0])
    before = [{k: v.clone() for k, v in e.tuner.state_dict().items()} for e in entries]
    enc = toy.layout.decoder_to_encoder(0)
    size = 8 // toy.layout.downscale[enc]
    g = torch.Generator().manual_seed(0)
    hsp, h = (torch.randn(2, toy.layout.channels[enc], size, size, generator=g) for _ in range(2))
    opts = {STATE_KEY: entries, "block": ("output", 0), "original_shape": [2, 4, 8, 8], "cond_or_uncond": [0, 1]}
    with torch.no_grad():
        h_out, ref = output_block_patch(h, hsp, dict(opts))
        _, bf16 = output_block_patch(h.bfloat16(), hsp.bfloat16(), dict(opts))
        _, again = output_block_patch(h, hsp, dict(opts))
    assert h_out is h and (ref - hsp).abs().max() > 1e-2
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - ref).abs().max() <= 0.02 * ref.abs().max()  # bf16 rounding of the same sums
    assert torch.equal(again, ref)
    for e, state in zip(entries, before):
        for k, v in e.tuner.state_dict().items():
            assert v.dtype == torch.float32 and v.device.type == "cpu" and torch.equal(v, state[k])


# --- errors -----------------------------------------------------------------------------------------------


def test_errors_are_one_line_and_name_what_to_fix(toy, tmp_path, caplog):
    sd15_unet = SimpleNamespace(model_channels=8, channel_mult=(1, 2, 4, 4), num_res_blocks=2, output_blocks=[0] * 12)
    sd15_layout = comfy_info.skip_layout(SimpleNamespace(model=SimpleNamespace(diffusion_model=sd15_unet)))
    sd15 = save_tuner(SCTuner(SCTunerConfig(), sd15_layout), tmp_path / "sd15")
    img = _image(toy.maps["canny"])
    cases = [
        (lambda: Tuner.apply(_model(toy), str(sd15), 1.0), r"12 skips, channels \[8, 8.*this U-Net has 6 skips, "
                                                            r"channels \[64, 64, 64, 128, 128, 128\]"),
        (lambda: Tuner.apply(_model(toy), toy.paths["canny"], 1.0), "CSC-Tuner for 'canny'.*SCEdit Control node"),
        (lambda: Control.apply(_model(toy), toy.paths["sc"], img, 1.0, 0.0, 1.0), "SC-Tuner.*SCEdit Tuner node"),
        (lambda: Control.apply(_model(toy), toy.paths["canny"], None, 1.0, 0.0, 1.0), "needs a condition image"),
        (lambda: Control.apply(_model(toy), toy.paths["canny"], img[..., :2], 1.0, 0.0, 1.0), "3-channel conditions"),
        (lambda: Tuner.apply(_model(toy), str(tmp_path / "missing"), 1.0), "missing: tuner file not found; pass a tuner folder"),
        (lambda: Tuner.apply(_model(toy), "", 1.0), "no tuner chosen"),
    ]
    latent8 = comfy_model(toy.base.unet, toy.base.pipeline.scheduler.config, 64, 8)
    cases.append((lambda: Control.apply(latent8, toy.paths["canny"], img, 1.0, 0.0, 1.0), "downsamples 4x.*1/8"))
    for call, message in cases:
        with pytest.raises(SceditError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
    # at run time: a skip whose channels do not fit the tuner
    entries = entries_of(Tuner.apply(_model(toy), toy.paths["sc"], 1.0)[0])
    with pytest.raises(SceditError, match="output block 0 .* 32-channel skip but tuner .* expects 128"):
        output_block_patch(torch.zeros(1, 128, 2, 2), torch.zeros(1, 32, 2, 2), {STATE_KEY: entries,
                                                                                 "block": ("output", 0)})
    with pytest.raises(SceditError, match="output block 6 .* expects no skip"):
        output_block_patch(torch.zeros(1, 64, 8, 8), torch.zeros(1, 64, 8, 8), {STATE_KEY: entries,
                                                                                "block": ("output", 6)})
    # a tuner recorded for another family than the model: a warning, not an error
    sd21 = save_tuner(randomize_(SCTuner(SCTunerConfig(), toy.layout), 0), tmp_path / "sd21",
                      base="stabilityai/stable-diffusion-2-1")
    with caplog.at_level(logging.WARNING, logger="scedit"):
        Tuner.apply(comfy_model(toy.base.unet, toy.base.pipeline.scheduler.config, 1024, 4), str(sd21), 1.0)
        assert not caplog.records
        Tuner.apply(comfy_model(toy.base.unet, toy.base.pipeline.scheduler.config, 768, 4), str(sd21), 1.0)
    assert "trained on stabilityai/stable-diffusion-2-1 (SD 2.x) but this model is SD 1.x" in caplog.text


@pytest.mark.parametrize("name, family", [
    ("runwayml/stable-diffusion-v1-5", "SD 1.x"), ("v1-5-pruned-emaonly.safetensors", "SD 1.x"), ("sd15", "SD 1.x"),
    ("stabilityai/stable-diffusion-2-1-base", "SD 2.x"), ("v2-1_768-ema-pruned.safetensors", "SD 2.x"),
    ("sd21", "SD 2.x"), ("stabilityai/stable-diffusion-xl-base-1.0", "SDXL"), ("sdxl", "SDXL"),
    ("/models/toy-base", None), (None, None)])
def test_base_family_from_recorded_names(name, family):
    assert comfy_info.base_family(name) == family


# --- official checkpoints, hint images -----------------------------------------------------------------------


def test_official_checkpoints_convert_on_load(toy, tmp_path):
    """scepter SC and CSC checkpoints (keys as `scedit convert` reads them) act as the scedit tuners they hold."""
    from scedit_cli.tuners import load_tuner

    sc, csc = load_tuner(toy.paths["sc"]), load_tuner(toy.paths["canny"])
    sc_state = {f"model.lsc_identity.{k.split('.')[1]}.tuner_op.{'.'.join(k.split('.')[2:])}": v
                for k, v in sc.state_dict().items()}
    csc_state = {}
    for k, v in csc.state_dict().items():
        if k.startswith("hint.pre_hint_blocks."):
            csc_state[k.removeprefix("hint.")] = v
        elif k.startswith("hint.dense_hint_blocks."):
            _, _, pos, rest = k.split(".", 3)
            csc_state[f"dense_hint_blocks.{csc.tuned_encoder_skips()[int(pos)]}.{rest}"] = v
        else:
            _, j, rest = k.split(".", 2)
            csc_state[f"lsc_tuner_blocks.{j}.tuner_op.{rest}"] = v
    (tmp_path / "canny").mkdir()
    torch.save(sc_state, tmp_path / "sc.bin")
    torch.save(csc_state, tmp_path / "canny" / "pytorch_model.bin")
    img = _image(toy.maps["canny"])
    x, ctx = _inputs(toy)
    with torch.no_grad():
        for ours, official, node in ((toy.paths["sc"], tmp_path / "sc.bin", "sc"),
                                     (toy.paths["canny"], tmp_path / "canny" / "pytorch_model.bin", "csc")):
            apply = (lambda m, p: Tuner.apply(m, str(p), 1.0)) if node == "sc" else \
                (lambda m, p: Control.apply(m, str(p), img, 1.0, 0.0, 1.0))
            converted = apply(_model(toy), official)[0]
            torch.testing.assert_close(apply_model(converted, x, 300, ctx, [0, 1]),
                                       apply_model(apply(_model(toy), ours)[0], x, 300, ctx, [0, 1]))
    assert entries_of(converted)[0].tuner.config.condition == "canny"
    assert entries_of(converted)[0].tuner.file_meta["source_format"] == "scepter-control"


def test_hint_images_are_fitted_and_paired_as_comfyui_controlnet_does():
    from scedit_cli.comfyui.hints import batch_hint, image_to_condition

    wide = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 1, 4, 6)
    # common_upscale(..., "center"): a 6x4 image fitted to 4x4 loses one column each side
    assert torch.equal(fit_hint(wide, 4, 4), wide[:, :, :, 1:5])
    assert torch.equal(fit_hint(wide, 12, 8), wide.repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert fit_hint(wide, 6, 4) is wide
    c = torch.arange(2.0).view(2, 1, 1, 1)
    assert batch_hint(c, 6, 2).flatten().tolist() == [0, 1, 0, 0, 1, 0]  # 3 latents a chunk, 2 images
    assert batch_hint(c[:1], 6, 2) is not None and batch_hint(c[:1], 6, 2).shape[0] == 1  # tiled by the tuner
    rgba = torch.rand(1, 5, 5, 4)
    assert torch.equal(image_to_condition(rgba, 3, "t"), rgba[..., :3].movedim(-1, 1))
    grey = image_to_condition(torch.ones(1, 5, 5, 3) * torch.tensor([1.0, 0.0, 0.0]), 1, "t")
    assert grey.shape == (1, 1, 5, 5) and torch.allclose(grey, torch.full_like(grey, 0.299))


# --- install and workflows ---------------------------------------------------------------------------------


def _fake_comfyui(root):
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("# ComfyUI\n")
    return root


def test_install_writes_a_loader_that_exposes_the_nodes(tmp_path, capsys, monkeypatch):
    from scedit_cli.cli import main
    from scedit_cli.comfyui import install as install_module

    comfy = _fake_comfyui(tmp_path / "ComfyUI")
    main(["comfyui", "install", str(comfy), "--json"])
    result = json.loads(capsys.readouterr().out)
    loader = comfy / "custom_nodes" / "scedit" / "__init__.py"
    assert result["status"] == "written" and result["loader"] == str(loader.resolve())
    assert (comfy / "models" / "scedit").is_dir() and "-m pip install" in result["pip_command"]
    spec = importlib.util.spec_from_file_location("scedit_custom_nodes", loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert module.NODE_DISPLAY_NAME_MAPPINGS is NODE_DISPLAY_NAME_MAPPINGS
    assert install(comfy).status == "unchanged"
    loader.write_text("# edited\n")
    with pytest.raises(SceditError, match="pass --force"):
        install(comfy)
    assert install(comfy, force=True).status == "replaced"
    with pytest.raises(SystemExit) as e:
        main(["comfyui", "install", str(tmp_path)])
    assert e.value.code == 2 and "not a ComfyUI checkout" in capsys.readouterr().err
    # ComfyUI's Python without scedit: the loader says how to install it (-I -S: no site-packages, no PYTHONPATH)
    monkeypatch.setattr(install_module, "pip_source", lambda: r"C:\Users\me\scedit")  # a Windows checkout
    assert install(comfy, force=True).status == "replaced"
    run = subprocess.run([sys.executable, "-I", "-S", str(loader)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "scedit is not installed in the Python that runs ComfyUI" in run.stderr
    assert r"-m pip install C:\Users\me\scedit` and restart ComfyUI" in run.stderr


CORE_NODES = {  # ComfyUI's nodes.py / comfy_extras: input names (linked inputs with their type) and outputs
    "CheckpointLoaderSimple": ({"ckpt_name": None}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ({"text": None, "clip": "CLIP"}, ("CONDITIONING",)),
    "EmptyLatentImage": ({"width": None, "height": None, "batch_size": None}, ("LATENT",)),
    "KSampler": ({"model": "MODEL", "seed": None, "steps": None, "cfg": None, "sampler_name": None, "scheduler": None,
                  "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT", "denoise": None},
                 ("LATENT",)),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": None}, ()),
    "LoadImage": ({"image": None}, ("IMAGE", "MASK")),
    "Canny": ({"image": "IMAGE", "low_threshold": None, "high_threshold": None}, ("IMAGE",)),
}


@pytest.mark.parametrize("name, node", [("sc_style.json", "SCEditTuner"), ("canny_control.json", "SCEditControl")])
def test_example_workflows_are_valid_api_json(name, node):
    graph = json.loads((files("scedit_cli") / "comfyui" / "workflows" / name).read_text())
    signatures = dict(CORE_NODES)
    for key, cls in NODE_CLASS_MAPPINGS.items():
        required = cls.INPUT_TYPES()["required"]
        links = {k: v[0] if v[0] in ("MODEL", "IMAGE") else None for k, v in required.items()}
        signatures[key] = (links, cls.RETURN_TYPES)
    assert node in {n["class_type"] for n in graph.values()}
    for nid, n in graph.items():
        inputs, _ = signatures[n["class_type"]]
        assert set(n["inputs"]) == set(inputs), (nid, n["class_type"])
        for k, v in n["inputs"].items():
            if inputs[k] is None:
                assert not isinstance(v, list), (nid, k)
                continue
            src, out = v
            assert signatures[graph[src]["class_type"]][1][out] == inputs[k], (nid, k)
        if n["class_type"] in NODE_CLASS_MAPPINGS:
            for k, (kind, *opts) in NODE_CLASS_MAPPINGS[n["class_type"]].INPUT_TYPES()["required"].items():
                if kind == "FLOAT":
                    assert opts[0]["min"] <= n["inputs"][k] <= opts[0]["max"]
                elif kind == "STRING":
                    assert isinstance(n["inputs"][k], str) and n["inputs"][k]


def test_hub_id_input_loads_a_tuner_from_the_hf_cache(toy, hf_cache, tmp_path, monkeypatch):
    files = {n: Path(toy.paths["sc"]) / n for n in ("tuner.safetensors", "tuner_config.json")}
    snap = add_to_cache(hf_cache, "someone/style", files)
    monkeypatch.setitem(sys.modules, "folder_paths", _fake_folder_paths(tmp_path / "models"))
    m = Tuner.apply(_model(toy), "", 1.0, hub_id=" someone/style ")[0]
    entry = entries_of(m)[0]
    assert entry.name == "someone/style"
    ref = load_tuner(snap)
    assert all(torch.equal(a, b) for a, b in zip(entry.tuner.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(SceditError, match="cannot load tuner 'nobody/missing'"):
        Tuner.apply(_model(toy), "", 1.0, hub_id="nobody/missing")
