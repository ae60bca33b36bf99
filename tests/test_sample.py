"""`scedit sample` / `compose` on tiny diffusers pipelines (CPU, 2 denoising steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scedit_cli.errors import SceditError
from scedit_cli.models import load_base
from scedit_cli.sampling import (
    ControlSpec,
    SampleSettings,
    compose,
    make_scheduler,
    parse_control,
    read_prompts,
    sample,
)
from scedit_cli.sampling.controls import fit_to, load_control_map
from scedit_cli.tuners import CSCTuner, SCTuner, SCTunerConfig, SkipLayout, save_tuner
from tiny_models import make_tiny_pipeline, randomize_, save_random_csc_tuners

STEPS = 2





@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny SD 1.5 pipeline folder, its loaded BaseModel, two CSC tuners (canny, color) and maps."""
    root = tmp_path_factory.mktemp("world")
    make_tiny_pipeline(root / "sd15")
    base = load_base(str(root / "sd15"))
    base.pipeline.set_progress_bar_config(disable=True)
    layout = SkipLayout.from_unet(base.unet)
    tuners = save_random_csc_tuners(base.unet, root)
    sc = SCTuner(SCTunerConfig(ratio=2), layout)
    randomize_(sc, 7)
    tuners["sc"] = save_tuner(sc, root / "sc_trained", base="tiny")
    tuners["sc_fresh"] = save_tuner(SCTuner(SCTunerConfig(), layout), root / "sc_fresh", base="tiny")
    rng = np.random.default_rng(0)
    maps = {}
    for name in ("edges", "palette", "palette2"):
        arr = (rng.random((32, 32, 3)) > 0.5).astype(np.uint8) * 255
        maps[name] = root / f"{name}.png"
        Image.fromarray(arr).save(maps[name])
    return {"root": root, "base": base, "tuners": tuners, "maps": maps}


def _settings(**kw):
    kw.setdefault("steps", STEPS)
    kw.setdefault("guidance_scale", 5.0)
    return SampleSettings(**kw)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _plain(base, prompt, seed, negative=None):
    out = base.pipeline(prompt, num_inference_steps=STEPS, guidance_scale=5.0, negative_prompt=negative,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
    return np.asarray(Image.fromarray((out * 255).round().astype(np.uint8))).astype(np.int16)


# --- prompts, schedulers, control specs (no generation) -----------------------------------------


def test_prompts_txt_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n\n  a blue square  \n")
    assert [p.prompt for p in read_prompts(txt)] == ["a red circle", "a blue square"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a cat", "seed": [3, 4]}\n\n{"caption": "a dog", "negative_prompt": "red"}\n')
    specs = read_prompts(jl)
    assert specs[0].seeds == (3, 4) and specs[1].prompt == "a dog" and specs[1].negative_prompt == "red"
    assert [s.index for s in specs] == [0, 1]


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("", ".txt", "holds no prompts"),
        ("\n  \n", ".jsonl", "holds no prompts"),
        ('{"prompt": "a"}\n{oops\n', ".jsonl", ":2: not valid JSON"),
        ('{"text2": "a"}\n', ".jsonl", ":1: no `prompt` key"),
        ('{"prompt": "a", "seed": -1}\n', ".jsonl", "`seed` must be"),
        ('{"prompt": "a", "seed": NaN}\n', ".jsonl", r":1: `seed` must be .*nan"),
        ('{"prompt": "a", "seed": [1, Infinity]}\n', ".jsonl", r":1: `seed` must be .*inf"),
        ("a", ".csv", "must end in .txt"),
    ],
)
def test_bad_prompts_files_are_clear_errors(tmp_path, content, suffix, message):
    f = tmp_path / f"prompts{suffix}"
    f.write_text(content)
    with pytest.raises(SceditError, match=message):
        read_prompts(f)
    with pytest.raises(SceditError, match="not found"):
        read_prompts(tmp_path / "missing.txt")


def test_scheduler_by_name_keeps_v_prediction(tmp_path):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear")
    for name in ("euler_a", "EulerAncestralDiscreteScheduler", "eulerancestraldiscrete", "DPM++"):
        new = make_scheduler(name, sched)
        assert new.config.prediction_type == "v_prediction"
    assert type(make_scheduler("unipc", sched)).__name__ == "UniPCMultistepScheduler"
    with pytest.raises(SceditError, match="unknown scheduler 'nope'.*ddim"):
        make_scheduler("nope", sched)


def test_parse_control_names_a_scale_that_is_not_a_number(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(SceditError, match="scale 'abc' is not a number"):
        parse_control(f"canny:{tmp_path / 'a.png'}:abc")
    (tmp_path / "b.png:abc").write_bytes(b"")  # a file whose name has the colon is taken as it is
    assert parse_control(f"canny:{tmp_path / 'b.png:abc'}").path == tmp_path / "b.png:abc"


def test_parse_control():
    c = parse_control("canny:photos/a.jpg:0.6")
    assert (c.name, c.path, c.scale, c.is_map) == ("canny", Path("photos/a.jpg"), 0.6, False)
    c = parse_control("color:pal.png", is_map=True)
    assert c.scale == 1.0 and c.is_map
    with pytest.raises(SceditError, match="NAME:IMAGE"):
        parse_control("canny")


def test_raw_control_image_goes_through_the_prepare_code(tmp_path):
    from scedit_cli.conditions import compute_condition

    rng = np.random.default_rng(1)
    photo = tmp_path / "photo.png"
    Image.fromarray((rng.random((48, 40, 3)) * 255).astype(np.uint8)).save(photo)
    got = load_control_map(ControlSpec("canny", photo), 32, 32)
    want = compute_condition("canny", fit_to(Image.open(photo).convert("RGB"), 32, 32))
    assert got.size == (32, 32)
    assert np.array_equal(np.asarray(got), np.asarray(want.convert("RGB")))
    assert photo.stat().st_size > 0  # the user's file is only read


# --- generation ----------------------------------------------------------------------------------


def test_fresh_sc_tuner_and_scale_zero_equal_plain_pipeline(world, tmp_path):
    base, tuners = world["base"], world["tuners"]
    plain = _plain(base, "a red circle", 3)
    r = sample(base, "a red circle", tmp_path / "fresh", tuners=[tuners["sc_fresh"]], settings=_settings(seeds=(3,)))
    assert np.array_equal(_pixels(r.images[0]), plain)
    # A trained SC tuner at scale 0 and a CSC tuner at condition scale 0: identical to the plain pipeline.
    r = sample(base, "a red circle", tmp_path / "zero", tuners=[tuners["sc"], tuners["canny"]],
               controls=[ControlSpec("canny", world["maps"]["edges"], 0.0, True)],
               settings=_settings(seeds=(3,), tuner_scale=0.0))
    assert np.array_equal(_pixels(r.images[0]), plain)
    # ... and at scale 1 the trained tuner does change the image (so the checks above can fail).
    r = sample(base, "a red circle", tmp_path / "one", tuners=[tuners["sc"]], settings=_settings(seeds=(3,)))
    assert np.abs(_pixels(r.images[0]) - plain).max() > 5


def test_outputs_metadata_manifest_grid_and_resume(world, tmp_path):
    base, out = world["base"], tmp_path / "run"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square", "negative_prompt": "red"}\n')
    from scedit_cli.sampling import read_prompts as rp

    specs = rp(prompts)
    settings = _settings(seeds=(0, 1), batch_size=3, scheduler="euler")
    r = sample(base, specs, out, tuners=[world["tuners"]["sc"]], settings=settings)
    assert (r.generated, r.skipped) == (4, 0)
    assert [p.name for p in r.images] == ["00000_s0.png", "00000_s1.png", "00001_s0.png", "00001_s1.png"]
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["file"] for x in lines] == [p.name for p in r.images]
    assert lines[3]["negative_prompt"] == "red" and lines[3]["seed"] == 1
    assert lines[0]["settings"]["scheduler"] == "EulerDiscreteScheduler" and lines[0]["settings"]["steps"] == STEPS
    with Image.open(out / "00001_s1.png") as im:
        meta = json.loads(im.info["scedit"])
        assert meta["prompt"] == "a blue square" and meta["seed"] == 1
        assert "Negative prompt: red" in im.info["parameters"]
    with Image.open(out / "grid.png") as g:
        assert g.size[0] > 32 * 2
    first = _pixels(out / "00000_s1.png")

    # Resume: nothing is generated again; a deleted image is regenerated identically (batch-independent seeds).
    (out / "00000_s1.png").unlink()
    r = sample(base, specs, out, tuners=[world["tuners"]["sc"]], settings=settings)
    assert (r.generated, r.skipped) == (1, 3)
    assert np.abs(_pixels(out / "00000_s1.png") - first).max() <= 1
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4
    # Other settings into the same folder: refused, not overwritten.
    with pytest.raises(SceditError, match="already holds a different image"):
        sample(base, specs, out, settings=_settings(seeds=(0, 1), steps=3))


def test_hint_encoder_runs_once_per_condition_image_not_per_step(world, tmp_path, monkeypatch):
    base, tuners = world["base"], world["tuners"]
    calls = []
    counts = {}
    orig = CSCTuner.encode_condition

    def counting(self, cond):
        calls.append(cond.shape[0])
        return orig(self, cond)

    monkeypatch.setattr(CSCTuner, "encode_condition", counting)
    for steps in (2, 4):
        calls.clear()
        r = sample(base, ["a cat", "a dog"], tmp_path / f"s{steps}", tuners=[tuners["canny"]],
                   controls=[ControlSpec("canny", world["maps"]["edges"], 1.0, True)],
                   settings=_settings(steps=steps, batch_size=2, guidance_scale=5.0))
        counts[steps] = (len(calls), r.extra["hint_encoder_calls"], r.generated)
    # One condition image: encoded once for the whole run, whatever the steps, prompts and CFG.
    assert counts == {2: (1, 1, 2), 4: (1, 1, 2)}


def test_compose_weights_one_zero_equals_first_condition_alone(world, tmp_path):
    base, tuners, maps = world["base"], world["tuners"], world["maps"]
    alone = sample(base, "a cat", tmp_path / "alone", tuners=[tuners["canny"]],
                   controls=[ControlSpec("canny", maps["edges"], 1.0, True)], settings=_settings())
    both = compose(base, "a cat", tmp_path / "both", tuners=[tuners["canny"], tuners["color"]],
                   controls=[ControlSpec("canny", maps["edges"], 1.0, True), ControlSpec("color", maps["palette"], 0.0, True)],
                   settings=_settings())
    assert np.array_equal(_pixels(alone.images[0]), _pixels(both.images[0]))
    mix = compose(base, "a cat", tmp_path / "mix", tuners=[tuners["canny"], tuners["color"]],
                  controls=[ControlSpec("canny", maps["edges"], 0.6, True), ControlSpec("color", maps["palette"], 0.6, True)],
                  settings=_settings())
    # Weights are normalised to sum to 1 (Eq. 7) and recorded.
    assert mix.extra["variants"] == [[0.5, 0.5]]
    assert json.loads((tmp_path / "mix" / "manifest.jsonl").read_text())["weights"] == [0.5, 0.5]
    assert np.abs(_pixels(mix.images[0]) - _pixels(alone.images[0])).max() > 0
    for bad, msg in (((1.0, -0.5), "must be >= 0"), ((0.0, 0.0), "sum to 0")):
        with pytest.raises(SceditError, match=msg):
            compose(base, "a cat", tmp_path / "bad", tuners=[tuners["canny"], tuners["color"]],
                    controls=[ControlSpec("canny", maps["edges"], bad[0], True),
                              ControlSpec("color", maps["palette"], bad[1], True)], settings=_settings())


def test_compose_sweep_and_many_maps(world, tmp_path):
    base, tuners, maps = world["base"], world["tuners"], world["maps"]
    two = [tuners["canny"], tuners["color"]]
    r = compose(base, "a cat", tmp_path / "sweep", tuners=two, sweep=3, settings=_settings(batch_size=3),
                controls=[ControlSpec("canny", maps["edges"], 1.0, True), ControlSpec("color", maps["palette"], 1.0, True)])
    assert len(r.images) == 3 and all(p.is_file() for p in r.images)
    assert r.extra["variants"] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    with Image.open(r.grid) as g:
        assert g.size[0] > 3 * 30 and g.size[1] < 2 * 32  # one row
    # Fig. 9a: same edges, several colour maps -> one image per map.
    r = compose(base, "a cat", tmp_path / "maps", tuners=two, settings=_settings(),
                controls=[ControlSpec("canny", maps["edges"], 0.5, True), ControlSpec("color", maps["palette"], 0.5, True),
                          ControlSpec("color", maps["palette2"], 0.5, True)])
    assert len(r.images) == 2 and r.extra["hint_encoder_calls"] == 3
    assert np.abs(_pixels(r.images[0]) - _pixels(r.images[1])).max() > 0
    with pytest.raises(SceditError, match="exactly two conditions"):
        compose(base, "a cat", tmp_path / "x", tuners=[tuners["canny"]], sweep=3, settings=_settings(),
                controls=[ControlSpec("canny", maps["edges"], 1.0, True)])


@pytest.mark.parametrize("kind, prediction", [("sd21", "v_prediction"), ("sdxl", "epsilon")])
def test_sd21_v_prediction_and_sdxl_pipelines(tmp_path, kind, prediction):
    make_tiny_pipeline(tmp_path / kind, kind=kind, prediction_type=prediction)
    base = load_base(str(tmp_path / kind))
    assert base.prediction_type == prediction and base.is_sdxl == (kind == "sdxl")
    assert type(base.pipeline).__name__ == ("StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline")
    layout = SkipLayout.from_unet(base.unet)
    fresh = SCTuner(SCTunerConfig(), layout)
    r = sample(base, "a cat", tmp_path / "out", tuners=[fresh], settings=_settings(seeds=(2,)))
    assert np.array_equal(_pixels(r.images[0]), _plain(base, "a cat", 2))
    assert json.loads((tmp_path / "out" / "manifest.jsonl").read_text())["settings"]["prediction_type"] == prediction
