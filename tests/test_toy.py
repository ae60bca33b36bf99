"""The toy world, its analytic scorers, its tokenizer, and the shipped toy base model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scedit_cli.toy import (
    TRIGGER,
    base_model_path,
    Scene,
    ToyWorld,
    canny,
    caption,
    edge_f1,
    make_dataset,
    read_image,
    read_metadata,
    render,
    scene_mask,
    score_images,
    style_score,
)
from scedit_cli.toy.world import STYLES, all_scenes

ASSET = base_model_path()


# ---------------------------------------------------------------- generator

def test_generator_is_deterministic_and_varied():
    w = ToyWorld()
    a, b = w.scenes(200, seed=7), w.scenes(200, seed=7)
    assert a == b
    assert w.scenes(200, seed=8) != a
    assert all(np.array_equal(np.asarray(render(x)), np.asarray(render(y))) for x, y in zip(a[:20], b[:20]))
    # every factor value occurs
    for field_, values in (("shape", w.shapes), ("colour", w.colours), ("background", w.backgrounds), ("position", w.positions)):
        assert {getattr(s, field_) for s in a} == set(values)


def test_render_matches_ground_truth():
    sc = Scene("circle", "red", "black", "top left")
    img = np.asarray(render(sc))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    m = scene_mask(sc)
    assert (img[m] == (220, 30, 30)).all()
    assert (img[~m] == (15, 15, 15)).all()
    ys, xs = np.nonzero(m)
    assert abs(xs.mean() - 8.5) < 1 and abs(ys.mean() - 8.5) < 1  # centre of the top-left quadrant
    big = np.asarray(render(sc, size=64))
    assert big.shape == (64, 64, 3) and (big[::2, ::2] == img).all()
    with pytest.raises(ValueError):
        render(sc, size=48)


def test_styles_differ_and_keep_the_silhouette():
    sc = Scene("square", "blue", "white", "center")
    solid, outline, striped, half = (np.asarray(render(sc, style=s)) for s in STYLES)
    m = scene_mask(sc)
    fg = np.array((30, 70, 230))
    assert (solid[m] == fg).all()
    assert (outline[m] == fg).all(axis=-1).mean() < 0.7  # the interior is background
    assert 0.3 < (striped[m] == fg).all(axis=-1).mean() < 0.7
    assert (outline[~m] == solid[~m]).all() and (striped[~m] == solid[~m]).all()
    # half: rows above the centre (16) painted, the rest of the shape background
    assert (half[:16][m[:16]] == fg).all() and not (half[16:][m[16:]] == fg).all(axis=-1).any()
    assert (half[~m] == solid[~m]).all()


def test_captions_and_trigger():
    sc = Scene("triangle", "yellow", "gray", "bottom right")
    assert caption(sc) == "a yellow triangle at the bottom right on a gray background"
    assert caption(Scene("circle", "red", "black", "center")) == "a red circle in the center on a black background"
    assert caption(sc, trigger=TRIGGER).endswith(f"in {TRIGGER} style")
    two = ToyWorld(sizes=("small", "large"))
    assert two.caption(Scene("square", "green", "white", "top left", size="small")).startswith("a small green square")


def test_make_dataset(tmp_path):
    out = make_dataset(tmp_path / "ds", n=12, seed=3, style="outline", trigger=TRIGGER)
    recs = read_metadata(out)
    assert len(recs) == 12
    for r in recs:
        assert TRIGGER in r["text"] and r["style"] == "outline"
        img = Image.open(out / r["image"])
        assert img.size == (32, 32)
        sc = Scene.from_dict(r)
        assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(render(sc)))
        assert np.array_equal(np.asarray(Image.open(out / r["mask"])) > 0, scene_mask(sc))
        assert np.array_equal(np.asarray(Image.open(out / r["canny"])) > 0, canny(img))
    # same arguments, same bytes
    again = make_dataset(tmp_path / "ds2", n=12, seed=3, style="outline", trigger=TRIGGER)
    assert (out / "metadata.jsonl").read_bytes() == (again / "metadata.jsonl").read_bytes()
    assert (out / recs[5]["image"]).read_bytes() == (again / recs[5]["image"]).read_bytes()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # nothing half-written left


# ---------------------------------------------------------------- scorers

@pytest.mark.parametrize("style", STYLES)
def test_scorer_reads_real_renders(style):
    w = ToyWorld()
    scenes = w.scenes(300, seed=11, style=style)
    s = score_images([render(x) for x in scenes], scenes)
    assert s["colour"] >= 0.99 and s["background"] >= 0.99 and s["position"] >= 0.99
    assert s["style"] >= 0.95
    if style == "half":
        # The reader fits filled templates; an upper half is often another shape's silhouette (measured: shape
        # read right 0.69, IoU with the full shape 0.35 on these 300 renders). Shape is not scored for `half`.
        assert s["shape"] >= 0.6 and s["iou"] >= 0.3
    else:
        assert s["shape"] >= 0.95
        assert s["iou"] >= 0.6


def test_scorer_reads_every_combination_exactly():
    scenes = list(all_scenes())
    s = score_images([render(x) for x in scenes], scenes)
    assert s["all"] == 1.0 and s["iou"] == 1.0


def test_scorer_catches_wrong_images():
    w = ToyWorld()
    scenes = w.scenes(100, seed=5)
    # score each image against the next scene's prompt: mostly wrong
    shifted = scenes[1:] + scenes[:1]
    s = score_images([render(x) for x in scenes], shifted)
    assert s["colour"] < 0.4 and s["position"] < 0.5 and s["all"] < 0.1
    # pure noise is not read as the asked-for scene
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(30)]
    assert score_images(noise, scenes[:30])["all"] < 0.2
    # an empty background has no shape
    r = read_image(np.full((32, 32, 3), 15, np.uint8))
    assert r.shape is None and r.background == "black"


def test_scorer_accepts_float_and_large_images():
    sc = Scene("square", "cyan", "black", "bottom left")
    arr = np.asarray(render(sc, size=64)).astype(np.float32) / 255.0
    s = score_images([arr, render(sc, size=64)], [sc, sc])
    assert s["all"] == 1.0


def test_style_score_separates_styles():
    w = ToyWorld()
    scenes = w.scenes(60, seed=9)
    for style in ("outline", "striped", "half"):
        own = np.mean([style_score(render(s, style=style), s, style) for s in scenes])
        solid = np.mean([style_score(render(s), s, style) for s in scenes])
        assert own >= 0.95 and solid <= 0.6, (style, own, solid)


def test_half_style_score_is_low_for_solid_and_empty_and_robust_to_small_shifts():
    scenes = ToyWorld().scenes(300, seed=11, style="half")
    # measured: solid renders mean 0.34, at most 0.38; empty images 0.0; outline 0.31, striped 0.39
    solid = [style_score(render(s, style="solid"), s, "half") for s in scenes]
    assert np.mean(solid) <= 0.45 and max(solid) <= 0.5
    from scedit_cli.toy.world import BACKGROUNDS

    assert all(style_score(np.full((32, 32, 3), BACKGROUNDS[s.background], np.uint8), s, "half") == 0.0
               for s in scenes[:30])
    # a half shape drawn 2 px off the asked-for centre still reads as half; 4 px off does not fully
    sc = Scene("square", "red", "black", "center", style="half")
    assert style_score(render(Scene("square", "red", "black", "center", dx=2, dy=-2, style="half")), sc) == 1.0
    assert style_score(render(Scene("square", "red", "black", "center", dx=0, dy=4, style="half")), sc) < 0.8


@pytest.mark.slow
def test_base_vae_round_trip_keeps_the_half_style():
    # Why `half` is the quickstart's style: the toy VAE decodes it (measured 0.977 on seed 1000, 0.971 on
    # seed 5, 64 scenes each; solid shapes through the same round trip 0.34), unlike 2-px outlines (0.08).
    import torch

    from scedit_cli.toy import base_model_path
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(base_model_path()), subfolder="vae").float().eval()
    scenes = ToyWorld().scenes(32, seed=5, style="half")
    x = torch.tensor(np.stack([np.asarray(render(s)) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    ims = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.mean([style_score(im, s) for im, s in zip(ims, scenes)]) >= 0.85


def test_edge_f1():
    sc = Scene("circle", "red", "white", "center")
    e = canny(render(sc))
    assert e.sum() > 20
    # edges lie on the shape's boundary
    from scipy.ndimage import binary_dilation, binary_erosion

    m = scene_mask(sc)
    boundary = binary_dilation(m) & ~binary_erosion(m)
    assert (e & binary_dilation(boundary)).sum() / e.sum() > 0.95
    assert edge_f1(e, e) == 1.0
    assert edge_f1(e, np.roll(e, 1, axis=1)) == 1.0  # within tolerance
    assert edge_f1(e, np.roll(e, 4, axis=1)) < 0.6
    assert edge_f1(e, np.roll(e, 4, axis=1), tolerance=4) > 0.9
    assert edge_f1(e, np.zeros_like(e)) == 0.0 and edge_f1(np.zeros_like(e), np.zeros_like(e)) == 1.0
    other = canny(render(Scene("square", "red", "white", "top right")))
    assert edge_f1(e, other) < 0.2


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_one_token_per_word(tmp_path):
    from transformers import CLIPTokenizer

    from scedit_cli.toy.tokenizer import save_tokenizer
    from scedit_cli.toy.world import vocabulary

    save_tokenizer(tmp_path / "tok")
    tok = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    for word in vocabulary():
        ids = tok(word).input_ids
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))  # bos, word, eos
    text = caption(Scene("circle", "purple", "gray", "top right"), trigger=TRIGGER)
    ids = tok(text).input_ids
    assert len(ids) == len(text.split()) + 2 <= tok.model_max_length
    assert TRIGGER in tok.convert_ids_to_tokens(ids)
    assert tok("zebra").input_ids[1:-1]  # unknown words still tokenize (into pieces)


# ---------------------------------------------------------------- the shipped base model

def _asset_files():
    return sorted(p for p in ASSET.rglob("*") if p.is_file())


def test_shipped_base_is_complete_and_small():
    assert (ASSET / "model_index.json").is_file(), "the toy base model is missing"
    idx = json.loads((ASSET / "model_index.json").read_text())
    assert idx["_class_name"] == "StableDiffusionPipeline"
    for comp in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (ASSET / comp).is_dir()
    total = sum(p.stat().st_size for p in _asset_files())
    assert total <= 20 * 2**20, f"{total / 2**20:.1f} MiB"
    assert not [p for p in _asset_files() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    from safetensors import safe_open

    for f in ASSET.rglob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            assert {sf.get_tensor(k).dtype for k in sf.keys()} == {torch.float16}, f


def test_shipped_base_configs():
    """The architecture the README documents."""
    unet = json.loads((ASSET / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [64, 128, 128]
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    assert unet["layers_per_block"] == 1 and unet["cross_attention_dim"] == 64
    assert unet["sample_size"] == 8 and unet["in_channels"] == 4
    vae = json.loads((ASSET / "vae" / "config.json").read_text())
    assert vae["block_out_channels"] == [32, 64, 64] and vae["latent_channels"] == 4
    assert vae["sample_size"] == 32 and 0.1 < vae["scaling_factor"] < 10
    te = json.loads((ASSET / "text_encoder" / "config.json").read_text())
    assert te["hidden_size"] == 64 and te["num_hidden_layers"] == 2
    sched = json.loads((ASSET / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler" and sched["prediction_type"] == "epsilon"


@pytest.fixture(scope="module")
def base_pipe():
    from diffusers import StableDiffusionPipeline

    # plain from_pretrained, no dtype: must come up in fp32 and run on CPU
    pipe = StableDiffusionPipeline.from_pretrained(str(ASSET), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_base_loads_offline(base_pipe):
    from transformers import CLIPTokenizer

    assert isinstance(base_pipe.tokenizer, CLIPTokenizer)
    assert base_pipe.vae.config.scaling_factor > 0
    assert base_pipe.unet.dtype == base_pipe.vae.dtype == base_pipe.text_encoder.dtype == torch.float32
    # 32 px image -> 8x8x4 latent; the U-Net has skip connections across 3 resolutions
    x = torch.zeros(1, 3, 32, 32)
    assert base_pipe.vae.encode(x).latent_dist.mean.shape == (1, 4, 8, 8)
    ids = base_pipe.tokenizer(caption(Scene("circle", "red", "black", "top left"), trigger=TRIGGER)).input_ids
    assert TRIGGER in base_pipe.tokenizer.convert_ids_to_tokens(ids)


# Measured on the shipped base (see README): 64 prompts, 25 DDIM steps, CFG 4 on CPU:
# colour, background, shape and position all 1.00 (64/64); on 128 prompts at CFG
# 1 / 3 / 5 / 7.5 likewise 1.00. The thresholds leave a wide margin for
# with fewer steps (12 prompts, 12 steps).
MIN_SCORES = {"colour": 0.9, "background": 0.9, "shape": 0.8, "position": 0.8}


def _draw(pipe, prompts):
    """12 DDIM steps at CFG 4 from seed 0: the same noise for every prompt list."""
    return pipe(prompts, height=32, width=32, num_inference_steps=12, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.mark.slow
def test_shipped_base_draws_prompted_scenes(base_pipe):
    w = ToyWorld()
    scenes = w.scenes(12, seed=99)
    out = _draw(base_pipe, [w.caption(s) for s in scenes])
    assert out.shape == (12, 32, 32, 3)
    s = score_images(list((out * 255).round().astype(np.uint8)), scenes)
    for k, v in MIN_SCORES.items():
        assert s[k] >= v, s
    # the prompt matters: the same seeds with the colours swapped give the other colours
    swapped = [Scene.from_dict({**x.to_dict(), "colour": "red" if x.colour != "red" else "blue"}) for x in scenes]
    out2 = _draw(base_pipe, [w.caption(x) for x in swapped])
    s2 = score_images(list((out2 * 255).round().astype(np.uint8)), swapped)
    assert s2["colour"] >= MIN_SCORES["colour"], s2
