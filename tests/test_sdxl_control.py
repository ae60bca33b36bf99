"""CSC-Tuners on SDXL end to end: train -> save -> sample -> compose through StableDiffusionXLPipeline.

A tiny SDXL-shaped pipeline (9 skips, text_time added conditions, two CLIP text
encoders, VAE factor 2) is saved to a folder and loaded like a real one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scedit_cli.methods.csc import CSCMethod
from scedit_cli.models import load_base
from scedit_cli.sampling import ControlSpec, SampleSettings, compose, sample
from scedit_cli.training import train
from scedit_cli.tuners import load_tuner
from train_helpers import make_dataset, make_tiny_pipeline, write_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two CSC-Tuners (canny, color) trained together for 2 steps on a tiny SDXL pipeline, with a
    validation grid; records the added conditions the U-Net saw."""
    root = tmp_path_factory.mktemp("sdxl-csc")
    make_tiny_pipeline(root / "sdxl", "sdxl")
    data = make_dataset(root / "data", n=2, size=(40, 48), conditions=("canny", "color"))
    recipe = write_recipe(
        root / "r.toml", root / "sdxl", data, {"name": "csc", "conditions": ["canny", "color"], "hint_kernel": 1},
        root / "out", model={"arch": "sdxl"}, train={"max_steps": 2, "learning_rate": 1e-2},
        validation={"every": 2, "num_images": 1, "steps": 1},
    )
    seen = []
    original = CSCMethod.predict

    def recording(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        seen.append((encoder_hidden_states.shape, {k: v.clone() for k, v in (added_cond_kwargs or {}).items()},
                     [c.shape for c in conditions or []]))
        return original(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, conditions)

    with pytest.MonkeyPatch.context() as mp:  # a module-scoped fixture cannot take `monkeypatch`
        mp.setattr(CSCMethod, "predict", recording)
        result = train(recipe)
    base = load_base(str(root / "sdxl"))
    base.pipeline.set_progress_bar_config(disable=True)
    return {"root": root, "data": data, "result": result, "seen": seen, "base": base}


def test_training_sees_both_encoders_time_ids_and_conditions(trained):
    ehs_shape, added, cond_shapes = trained["seen"][0]
    assert ehs_shape[-1] == 32  # both text encoders' hidden states (16 + 16), concatenated
    assert set(added) == {"text_embeds", "time_ids"}
    assert added["text_embeds"].shape == (2, 32)  # the second encoder's pooled projection
    ids = added["time_ids"]
    assert ids.shape == (2, 6)
    assert ids[:, :2].tolist() == [[40, 48]] * 2  # original size (h, w)
    assert ids[:, 4:].tolist() == [[32, 32]] * 2  # target size
    assert cond_shapes == [(2, 3, 32, 32)] * 2
    out = trained["root"] / "out"
    assert trained["result"].samples == [str(out / "samples" / "step-00000002.png")]


def test_saved_tuners_are_sdxl_csc_tuners(trained):
    out = trained["root"] / "out"
    for cond in ("canny", "color"):
        t = load_tuner(out / f"tuner-{cond}", unet=trained["base"].unet)
        assert t.method == "csc" and t.config.condition == cond and t.layout.num_skips == 9
        # The official SDXL controllers' pre-hint width; the VAE factor of this (tiny) base.
        assert (t.config.pre_hint_dim_ratio, t.config.pre_hint_out_channels, t.config.hint_downscale) == (2.0, 320, 2)
        meta = json.loads((out / f"tuner-{cond}" / "tuner_config.json").read_text())
        assert meta["steps"] == 2 and meta["alpha"] == 0.5


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def test_sample_and_compose_through_the_sdxl_pipeline(trained, tmp_path):
    base, out, data = trained["base"], trained["root"] / "out", trained["data"]
    settings = SampleSettings(steps=2, guidance_scale=5.0)
    canny = ControlSpec("canny", data / "conditions" / "canny" / "0.png", 1.0, True)
    color = ControlSpec("color", data / "conditions" / "color" / "1.png", 1.0, True)
    plain = base.pipeline("a red circle", num_inference_steps=2, guidance_scale=5.0, output_type="np",
                          generator=torch.Generator("cpu").manual_seed(0)).images[0]
    plain = (plain * 255).round().astype(np.int16)

    r = sample(base, "a red circle", tmp_path / "s", tuners=[out / "tuner-canny"], controls=[canny], settings=settings)
    assert type(base.pipeline).__name__ == "StableDiffusionXLPipeline"
    img = _pixels(r.images[0])
    assert img.shape == (32, 32, 3) and np.abs(img - plain).max() > 0, "the trained CSC-Tuner changes the image"
    rec = json.loads((tmp_path / "s" / "manifest.jsonl").read_text())
    assert rec["settings"]["model_kind"] == "sdxl" and r.extra["hint_encoder_calls"] == 1
    off = sample(base, "a red circle", tmp_path / "off", tuners=[out / "tuner-canny"],
                 controls=[ControlSpec("canny", canny.path, 0.0, True)], settings=settings)
    assert np.array_equal(_pixels(off.images[0]), plain), "scale 0 is the base SDXL pipeline exactly"

    c = compose(base, "a red circle", tmp_path / "c", tuners=[out / "tuner-canny", out / "tuner-color"],
                controls=[canny, color], settings=settings, sweep=3)
    assert c.extra["variants"] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    first = _pixels(c.images[0])
    assert np.array_equal(first, img), "sweep end (1, 0) is canny alone"
    assert np.abs(_pixels(c.images[1]) - first).max() > 0
