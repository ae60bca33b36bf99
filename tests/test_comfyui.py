"""ComfyUI nodes: the same images as `scedit sample` / `compose` inside a double of ComfyUI's U-Net loop
(tests/comfy_double.py), ComfyUI's model, the patch and its state: CFG batching, start/end percent, clones,
other patches, the fused edit's plans, dtypes. Setup, errors and installation: test_comfyui_setup.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from comfy_double import ModelSamplingDiscrete, apply_model
from comfy_toy import (PROMPT, Control, Tuner, comfy_sample, load_image, png_pixels, sample_settings,
                       toy, toy_inputs, toy_model)  # noqa: F401  (toy: a fixture)
from scedit_cli.comfyui import model as comfy_info
from scedit_cli.comfyui.patch import STATE_KEY, entries_of, output_block_patch, weights_at
from scedit_cli.errors import SceditError
from scedit_cli.sampling import ControlSpec, compose, sample
from scedit_cli.tuners import SkipLayout, attach, detach


def test_sc_tuner_node_gives_scedit_sample_images(toy, tmp_path):
    want = png_pixels(sample(toy.base, PROMPT, tmp_path, tuners=[toy.paths["sc"]], settings=sample_settings()).images[0])
    plain = comfy_sample(toy, toy_model(toy))
    got = comfy_sample(toy, Tuner.apply(toy_model(toy), toy.paths["sc"], 1.0)[0])
    assert np.abs(got - plain).max() > 20  # the tuner changes the image
    assert np.abs(got - want).max() <= 1


def test_control_node_gives_scedit_sample_images(toy, tmp_path):
    spec = ControlSpec("canny", toy.maps["canny"], 1.0, is_map=True)
    res = sample(toy.base, PROMPT, tmp_path, tuners=[toy.paths["canny"]], controls=[spec], settings=sample_settings())
    model = Control.apply(toy_model(toy), toy.paths["canny"], load_image(toy.maps["canny"]), 1.0, 0.0, 1.0)[0]
    got = comfy_sample(toy, model)
    assert np.abs(got - comfy_sample(toy, toy_model(toy))).max() > 20
    assert np.abs(got - png_pixels(res.images[0])).max() <= 1


def test_sc_and_two_controls_stack_like_scedit_compose(toy, tmp_path):
    """SCEdit Tuner -> Control(canny, 1) -> Control(color, .5) == compose with weights (1, .5) (Eq. 7)."""
    controls = [ControlSpec("canny", toy.maps["canny"], 1.0, is_map=True),
                ControlSpec("color", toy.maps["color"], 0.5, is_map=True)]
    res = compose(toy.base, PROMPT, tmp_path, [toy.paths[k] for k in ("sc", "canny", "color")], controls,
                  settings=sample_settings())
    m = Tuner.apply(toy_model(toy), toy.paths["sc"], 1.0)[0]
    m = Control.apply(m, toy.paths["canny"], load_image(toy.maps["canny"]), 1.0, 0.0, 1.0)[0]
    m = Control.apply(m, toy.paths["color"], load_image(toy.maps["color"]), 0.5, 0.0, 1.0)[0]
    assert [w for _, w in weights_at(entries_of(m), {})] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert np.abs(comfy_sample(toy, m) - png_pixels(res.images[0])).max() <= 1


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
    assert comfy_info.skip_layout(toy_model(toy)) == toy.layout
    flux = SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(1, 1)))
    with pytest.raises(SceditError, match="Linear, which has no U-Net skip connections"):
        comfy_info.skip_layout(flux)


@pytest.mark.parametrize("clone_mode", ["nested", "deepcopy"])
def test_clones_share_no_mutable_state_and_one_patch_serves_all_nodes(toy, clone_mode):
    base = toy_model(toy, clone_mode)
    m1 = Tuner.apply(base, toy.paths["sc"], 1.0)[0]
    m2 = Control.apply(m1, toy.paths["canny"], load_image(toy.maps["canny"]), 0.7, 0.0, 1.0)[0]
    assert base.model_options == {"transformer_options": {}}
    for m, n in ((m1, 1), (m2, 2)):
        assert m.model_options["transformer_options"]["patches"]["output_block_patch"] == [output_block_patch]
        assert len(entries_of(m)) == n
    assert entries_of(m2)[0] is entries_of(m1)[0]  # entries are shared, never copied (also by deepcopy)
    assert m1.model_options["transformer_options"][STATE_KEY] is not m2.model_options["transformer_options"][STATE_KEY]
    assert Tuner.apply(base, toy.paths["sc"], 0.0)[0] is base  # strength 0: the model as it was
    assert Control.apply(base, toy.paths["canny"], load_image(toy.maps["canny"]), 0.0, 0.0, 1.0)[0] is base


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
        ref = toy_model(toy)
        ref.set_model_output_block_patch(patch)
        return ref

    x, ctx = toy_inputs(toy)
    with torch.no_grad():
        f = toy_model(toy)
        f.set_model_output_block_patch(freeu)
        freeu_then_sc = Tuner.apply(f, toy.paths["sc"], 1.0)[0]
        sc_then_freeu = Tuner.apply(toy_model(toy), toy.paths["sc"], 1.0)[0].clone()
        sc_then_freeu.set_model_output_block_patch(freeu)
        for model, first in ((freeu_then_sc, True), (sc_then_freeu, False)):
            got = apply_model(model, x, 500, ctx, [0, 1])
            torch.testing.assert_close(got, apply_model(manual(first), x, 500, ctx, [0, 1]), rtol=1e-5, atol=1e-5)


def test_controlnet_residuals_are_in_the_skip_the_tuner_edits(toy):
    """ComfyUI adds ControlNet residuals to hsp before the patch, as diffusers adds them before the up
    blocks: the double with residuals equals diffusers + `attach` with the same residuals."""
    from scedit_cli.tuners import load_tuner

    x, ctx = toy_inputs(toy)
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
        got = apply_model(Tuner.apply(toy_model(toy), toy.paths["sc"], 1.0)[0], x, 500, ctx, [0, 1],
                          control={"output": list(skips)})
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cfg_batch_and_image_batch_pair_like_controlnet(toy):
    """Batch [cond x2, uncond x2] with a 2-image IMAGE: latent i of each chunk gets image i."""
    imgs = torch.cat([load_image(toy.maps["canny"]), load_image(toy.maps["color"])])
    x, ctx = toy_inputs(toy, batch=4)
    with torch.no_grad():
        both = apply_model(Control.apply(toy_model(toy), toy.paths["canny"], imgs, 1.0, 0.0, 1.0)[0], x, 400, ctx, [0, 1])
        for i in range(2):
            one = Control.apply(toy_model(toy), toy.paths["canny"], imgs[i:i + 1], 1.0, 0.0, 1.0)[0]
            for chunk in range(2):
                k = 2 * chunk + i
                ref = apply_model(one, x[k:k + 1], 400, ctx[k:k + 1], [chunk])
                torch.testing.assert_close(both[k:k + 1], ref, rtol=1e-4, atol=1e-5)
        plain = apply_model(toy_model(toy), x, 400, ctx, [0, 1])
    assert (both - plain).abs().max() > 1e-2


def test_fused_terms_are_made_once_per_image_batch_and_reused_by_every_step(toy):
    """SC + two Controls (one with a 2-image IMAGE) run as one fused edit per skip; its plans, made on
    the first U-Net call, are the same objects on the next calls (the tiled hints keep their identity)."""
    imgs = torch.cat([load_image(toy.maps["canny"]), load_image(toy.maps["color"])])
    m = Tuner.apply(toy_model(toy), toy.paths["sc"], 1.0)[0]
    m = Control.apply(m, toy.paths["canny"], imgs, 1.0, 0.0, 1.0)[0]
    m = Control.apply(m, toy.paths["color"], load_image(toy.maps["color"]), 0.5, 0.0, 1.0)[0]
    x, ctx = toy_inputs(toy, batch=4)
    plans = entries_of(m)[0].plans
    with torch.no_grad():
        first = apply_model(m, x, 400, ctx, [0, 1])
        made = {k: v[2] for k, v in plans.items()}
        again = apply_model(m, x, 300, ctx, [0, 1])
    assert len(made) == toy.layout.num_skips
    assert all(plans[k][2] is v for k, v in made.items())
    assert not torch.equal(first, again)


def test_start_end_percent_follow_controlnets_sigma_range(toy):
    x, ctx = toy_inputs(toy)
    img = load_image(toy.maps["canny"])

    def run(start, end, t):
        return apply_model(Control.apply(toy_model(toy), toy.paths["canny"], img, 1.0, start, end)[0], x, t, ctx, [0, 1])

    with torch.no_grad():
        for t in (900, 100):  # high sigma: early in the schedule; low sigma: late
            full, plain = run(0.0, 1.0, t), apply_model(toy_model(toy), x, t, ctx, [0, 1])
            assert (full - plain).abs().max() > 1e-3
            early, late = run(0.0, 0.5, t), run(0.5, 1.0, t)
            on, off = (early, late) if t == 900 else (late, early)
            assert torch.equal(on, full) and torch.equal(off, plain)
    m = Control.apply(toy_model(toy), toy.paths["canny"], img, 1.0, 0.25, 0.75)[0]
    entry = entries_of(m)[0]
    for sampling in (m.model.model_sampling, ModelSamplingDiscrete(torch.linspace(0.99, 0.01, 1000))):
        # read while sampling: a model-sampling node later in the graph patches MODEL.model by then
        m.model.model_sampling = sampling
        assert entry.sigma_range() == (sampling.percent_to_sigma(0.25), sampling.percent_to_sigma(0.75))
    with pytest.raises(SceditError, match="start_percent 0.8 and end_percent 0.2"):
        Control.apply(toy_model(toy), toy.paths["canny"], img, 1.0, 0.8, 0.2)
    with pytest.raises(SceditError, match=r"sampler's current sigma"):
        entry.active({})


def test_eq7_weights_renormalise_over_the_controls_acting_now(toy):
    img = load_image(toy.maps["canny"])
    m = Tuner.apply(toy_model(toy), toy.paths["sc"], 0.8)[0]
    m = Control.apply(m, toy.paths["canny"], img, 1.0, 0.0, 0.5)[0]
    m = Control.apply(m, toy.paths["color"], img, 0.5, 0.0, 1.0)[0]
    sampling = m.model.model_sampling
    high, low = ({"sigmas": sampling.sigma(torch.tensor(t)).reshape(1)} for t in (900.0, 100.0))
    assert [w for _, w in weights_at(entries_of(m), high)] == pytest.approx([0.8, 2 / 3, 1 / 3])
    assert [(e.name, w) for e, w in weights_at(entries_of(m), low)] == [(toy.paths["sc"], 0.8),
                                                                         (toy.paths["color"], 0.5)]


def test_tuners_follow_the_skip_dtype_and_leave_the_loaded_tuner_alone(toy):
    img = load_image(toy.maps["canny"])
    entries = entries_of(Control.apply(Tuner.apply(toy_model(toy), toy.paths["sc"], 1.0)[0], toy.paths["canny"],
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
