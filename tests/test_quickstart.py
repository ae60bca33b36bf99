"""`scedit quickstart` and the learning checks on the shipped toy base (CPU, seeds fixed).

One short training per concern (module-scoped fixtures), through the shipped quickstart recipes and the
library's `train()` / `sample()` / `compose()`, scored with the analytic toy scorers. Thresholds come from
measured runs (numbers in the comments) with a margin.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scedit_cli.errors import SceditError
from scedit_cli.quickstart import (
    COLOR_RATIO,
    CONTROL_JITTER,
    QuickstartSettings,
    add_color_maps,
    prepare_output,
    recipe_path,
    run_quickstart,
    vae_ceiling,
)
from scedit_cli.recipes import load_recipe
from scedit_cli.sampling import ControlSpec, PromptSpec, SampleSettings, compose, load_model, load_tuners, sample
from scedit_cli.toy import TRIGGER, ToyWorld, base_model_path, canny, make_dataset, render, score_images
from scedit_cli.training.loop import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_thread():
    # Two OpenMP threads on a loaded 2-core machine spin against each other (measured 7x slower per U-Net
    # call); one thread keeps these timings stable. Restored afterwards.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def base(one_thread):
    return load_model(str(base_model_path()), device="cpu")


def _train(name, data, out, steps, seed=0):
    res = train(recipe_path(name), overrides={"data.source": str(data), "train.output_dir": str(out),
                                              "train.max_steps": steps, "train.seed": seed})
    assert res.steps == steps and res.outputs
    return Path(res.outputs[0])


def _rgb(paths):
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def test_shipped_recipes_parse_and_point_at_the_toy_base():
    for name, method in (("style", "sc"), ("canny", "csc"), ("color", "csc")):
        r = load_recipe(recipe_path(name))
        assert r.method_name == method
        assert Path(r.model.source) == base_model_path().resolve()
        assert r.data.resolution == 32
        if method == "csc":
            assert r.method.conditions == [name]


def test_color_maps_column(tmp_path):
    d = make_dataset(tmp_path / "d", 3, seed=0, conditions=("canny",))
    add_color_maps(d)
    rows = [json.loads(x) for x in (d / "metadata.jsonl").read_text().splitlines()]
    assert [r["color"] for r in rows] == [f"color/{Path(r['image']).name}" for r in rows]
    cmap = np.asarray(Image.open(d / rows[0]["color"]))
    # 32 px / 4 -> an 8x8 grid of colour cells
    assert cmap.shape == (32, 32, 3)
    cells = cmap.reshape(8, COLOR_RATIO, 8, COLOR_RATIO, 3)
    assert (cells == cells[:, :1, :, :1]).all()


def test_output_folder_guard(tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(SceditError, match="not written by `scedit quickstart`"):
        prepare_output(other)
    assert (other / "precious.txt").exists()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SceditError, match="not a folder"):
        prepare_output(f)
    with pytest.raises(SceditError, match="--steps-scale"):
        QuickstartSettings(steps_scale=0).validate()
    with pytest.raises(SceditError, match="--style"):
        QuickstartSettings(style="solid").validate()
    with pytest.raises(SceditError, match="n_train must be >= 1, got 0"):
        QuickstartSettings(n_train=0).validate()


# --- SC-Tuner: a style the base never saw -------------------------------------------------------------


@pytest.fixture(scope="module")
def style_eval(tmp_path_factory, base):
    tmp = tmp_path_factory.mktemp("style")
    data = make_dataset(tmp / "data", 256, seed=1, style="half", trigger=TRIGGER, conditions=())
    tuner = _train("style", data, tmp / "run", STYLE_STEPS)
    scenes = ToyWorld().scenes(16, 1000, "half")
    prompts = [ToyWorld().caption(s, trigger=TRIGGER) for s in scenes]
    st = SampleSettings(steps=12, guidance_scale=4.0, seeds=(0,), batch_size=16, grid_max=0)
    before = score_images(_rgb(sample(base, prompts, tmp / "before", settings=st).images), scenes)
    after = score_images(_rgb(sample(base, prompts, tmp / "after", tuners=[tuner], settings=st).images), scenes)
    return before, after, vae_ceiling(base, scenes, "half")


STYLE_STEPS = 150


def test_vae_of_the_toy_base_draws_half_but_not_outlines(base):
    # Why `half` is the quickstart's style. Measured (16 prompts, seed 1000): real `half` images round-tripped
    # through the base VAE score 0.973 on the half style score; real outline images 0.076 on the outline score
    # (1.0 before the round trip): no U-Net-side tuner can draw outlines through this VAE.
    scenes = ToyWorld().scenes(16, 1000)
    assert vae_ceiling(base, scenes, "half") >= 0.9
    assert vae_ceiling(base, scenes, "outline") < 0.2


def test_sc_tuner_moves_style_toward_half_and_keeps_colour(style_eval):
    before, after, ceiling = style_eval
    # Measured (150 steps, batch 16, lr 3e-3, cache, 16 prompts, seed 0, 1 thread: 21 s CPU training), sampled
    # with 12 DDIM steps: style 0.368 -> 0.756 (25 steps: 0.350 -> 0.714; VAE ceiling 0.973), colour 1.00 -> 1.00.
    # A solid shape scores ~0.34 on the half score, so `before` is the base drawing solid shapes.
    assert before["style"] < 0.45
    assert after["style"] > before["style"] + STYLE_GAIN
    assert after["colour"] >= COLOUR_KEPT
    assert ceiling >= 0.9


STYLE_GAIN = 0.2  # measured gain 0.39 with 12 sampling steps (0.36 with 25; 0.50 after the recipe's 300 steps)
COLOUR_KEPT = 0.9


# --- CSC-Tuners: a map says where the shape is ---------------------------------------------------------
# Control captions leave the position out, so only the condition map says where the shape goes. One dataset,
# one training per condition and one base-without-control sampling serve every CSC test below.

# Measured with this file's setup (the quickstart recipes: batch 16, lr 3e-3, Min-SNR gamma 1; 16 held-out prompts,
# seed 0, 1 thread; the base without control: position 0.125, edge F1 0.15-0.17): position / edge F1 with the map
#   canny: 350 steps 0.94, 500 steps 0.94 (25 DDIM steps; benchmarks/README.md)
#   colour: 150 steps 0.75 / 0.46 (12 DDIM steps)
# The canny check trains the recipe's 400 steps (~3 min of CPU), so it runs with SCEDIT_SLOW_TESTS=1 only; the
# colour check (150 steps) keeps the same CSC training / map-conditioned sampling paths covered by default, and the
# compose test only needs a canny tuner that changes the image (a few steps).
SLOW = bool(os.environ.get("SCEDIT_SLOW_TESTS"))
CONTROL_STEPS = {"canny": 400 if SLOW else 10, "color": 150}
# DDIM steps of the evaluation: the canny figures were measured with 25; colour measured with 12 gives the same
# position 0.125 -> 0.438 and edge F1 0.150 -> 0.384 (25 steps: 0.169 -> 0.394) in less than half the time.
SAMPLE_STEPS = 25 if SLOW else 12
N_CONTROL = 16


@pytest.fixture(scope="module")
def control(tmp_path_factory, base):
    """The quickstart's control data, a CSC-Tuner per condition trained on it, the held-out prompts and maps."""
    from scedit_cli.conditions import compute_condition

    tmp = tmp_path_factory.mktemp("control")
    world = ToyWorld(jitter=CONTROL_JITTER, caption_positions=False)
    data = make_dataset(tmp / "data", 256, seed=2, world=world, conditions=("canny",))
    add_color_maps(data)
    tuners = {c: _train(c, data, tmp / f"run-{c}", CONTROL_STEPS[c]) for c in ("canny", "color")}
    scenes = world.scenes(N_CONTROL, 2000)
    maps = {c: [] for c in ("canny", "color")}
    for i, scene in enumerate(scenes):
        img = render(scene)
        for c, params in (("canny", None), ("color", {"ratio": COLOR_RATIO})):
            maps[c].append(tmp / f"{c}-{i:02d}.png")
            compute_condition(c, img, params=params).save(maps[c][-1])
    st = SampleSettings(steps=SAMPLE_STEPS, guidance_scale=4.0, seeds=(0,), batch_size=N_CONTROL, grid_max=0)
    prompts = [world.caption(s) for s in scenes]
    plain = _rgb(sample(base, prompts, tmp / "plain", settings=st).images)
    return {"tmp": tmp, "tuners": tuners, "scenes": scenes, "prompts": prompts, "maps": maps, "plain": plain}


def _f1(images, scenes):
    from scedit_cli.toy import edge_f1

    return float(np.mean([edge_f1(canny(im), canny(render(s))) for im, s in zip(images, scenes)]))


@pytest.mark.parametrize("condition", [
    pytest.param("canny", marks=pytest.mark.skipif(
        not SLOW, reason="trains 400 steps on CPU (~3 min); the colour case covers the same paths; "
                         "set SCEDIT_SLOW_TESTS=1")),
    "color"])
def test_csc_tuner_places_shapes_where_the_map_says(control, base, condition):
    tmp, scenes = control["tmp"], control["scenes"]
    tuner = load_tuners([control["tuners"][condition]], base)[0]
    st = SampleSettings(steps=SAMPLE_STEPS, guidance_scale=4.0, seeds=(0,), batch_size=N_CONTROL, grid_max=0)
    prompts = [PromptSpec(i, p, controls=(ControlSpec(condition, control["maps"][condition][i], 1.0, is_map=True),))
               for i, p in enumerate(control["prompts"])]  # each prompt its own map, one batch
    controlled = _rgb(sample(base, prompts, tmp / f"ctl-{condition}", tuners=[tuner], settings=st).images)
    before, after = score_images(control["plain"], scenes), score_images(controlled, scenes)
    f1_before, f1_after = _f1(control["plain"], scenes), _f1(controlled, scenes)
    # Measured: see CONTROL_STEPS' comment.
    got = (before["position"], after["position"], f1_before, f1_after)
    assert after["position"] >= before["position"] + 0.4, got
    assert f1_after >= f1_before + 0.2, got
    assert after["colour"] >= 0.9


def test_compose_weights_1_0_and_0_1_reproduce_each_single_control(control, base):
    tmp = control["tmp"]
    tuners = dict(zip(("canny", "color"), load_tuners([control["tuners"]["canny"], control["tuners"]["color"]], base)))
    maps = {c: ControlSpec(c, control["maps"][c][0], 1.0, is_map=True) for c in ("canny", "color")}
    st = SampleSettings(steps=8, guidance_scale=4.0, seeds=(3,), grid_max=0)
    prompt = [PromptSpec(0, control["prompts"][0])]
    single = {c: _rgb(sample(base, prompt, tmp / f"s-{c}", tuners=[tuners[c]], controls=[maps[c]],
                             settings=st).images)[0] for c in ("canny", "color")}
    plain = _rgb(sample(base, prompt, tmp / "s-base", settings=st).images)[0]
    sweep = _rgb(compose(base, prompt, tmp / "sweep", tuners=[tuners["canny"], tuners["color"]],
                         controls=[maps["canny"], maps["color"]], settings=st, sweep=3).images)
    assert np.array_equal(sweep[0], single["canny"])
    assert np.array_equal(sweep[2], single["color"])
    # the tuners do change the image, and the mixture is neither single control
    assert not np.array_equal(single["canny"], plain) and not np.array_equal(single["color"], plain)
    assert not np.array_equal(sweep[1], sweep[0]) and not np.array_equal(sweep[1], sweep[2])


# --- the whole command, small ----------------------------------------------------------------------------


def test_quickstart_end_to_end_small(tmp_path, one_thread):
    out = tmp_path / "qs"
    s = QuickstartSettings(output=out, steps_scale=0.01, n_eval=2, n_train=16, sample_steps=4, threads=1)
    said = []
    res = run_quickstart(s, say=said.append)
    rep = json.loads((out / "report.json").read_text())
    assert rep == json.loads(json.dumps(res.report))
    assert rep["data"]["n_train"] == 16
    # the stage lines as a terminal shows them (`console.info` prints text, not rich markup)
    assert [m.split(":")[0] for m in said if m.startswith("[")] == ["[1/4] data", "[2/4] train", "[3/4] control",
                                                                    "[4/4] report"], said
    assert not any("[bold]" in m or "[/" in m for m in said), said
    for d in ("style", "control"):
        assert len((out / "data" / d / "metadata.jsonl").read_text().splitlines()) == 16
    md = (out / "report.md").read_text()
    for name in ("style", "canny", "color"):
        tr = rep["training"][name]
        assert tr["steps"] == max(1, round(load_recipe(recipe_path(name)).train.max_steps * 0.01))
        assert (out / tr["tuner"] / "tuner.safetensors").is_file()
        assert (out / tr["loss_curve"]).is_file() and tr["loss_curve"] in md
    for g in ("grids/style.png", "grids/control.png"):
        assert (out / g).is_file() and g in md
    assert rep["control"]["compose_identity"] == {"weights_1_0_vs_canny_max_abs_diff": 0,
                                                  "weights_0_1_vs_color_max_abs_diff": 0}
    for k in ("before", "after"):
        assert set(rep["style"][k]) >= {"style", "colour", "shape", "position", "background", "all"}
        assert len(list((out / "samples" / "style" / k).glob("*.png"))) >= 2
    assert 0.0 <= rep["style"]["vae_ceiling"] <= 1.0
    # the report's sentence about reading `half` shapes carries this run's own measurement of the real renders
    scenes = ToyWorld().scenes(s.n_eval, s.seed + 1000, s.style)
    real = score_images([render(x) for x in scenes], scenes)["shape"]
    assert rep["style"]["real_shape"] == real
    assert f"read right {real:.2f} of the time" in md
    assert set(rep["timing"]["stages"]) == {"data", "train", "control", "report"}
    # style, colour and the style evaluation ran in the second process, which logged there
    assert rep["parallel"]["second"] == ["style", "color", "sample"] and rep["parallel"]["threads_per_process"] == 1
    assert "step" in (out / "runs" / "second-process.log").read_text()
    assert not list(out.rglob("*.tmp"))
    # report.md's commands redo the same steps: each writes where the quickstart wrote, and run again (into
    # another folder) they draw the same pixels
    from scedit_cli.cli import main

    for name in ("sample_style_after", "sample_canny", "compose_sweep"):
        argv = shlex.split(rep["commands"][name])
        assert argv[0] == "scedit" and rep["commands"][name] in md
        where = Path(argv[argv.index("--out") + 1])
        assert where.is_absolute() and where.parent.parent == out / "samples", where
        again = tmp_path / "again" / name
        argv[argv.index("--out") + 1] = str(again)
        main([*argv[1:], "--json"])  # returns on success; a failure exits 2
        made = sorted(p.name for p in where.glob("0*.png"))
        assert made and made == sorted(p.name for p in again.glob("0*.png")), name
        for f in made:
            assert np.array_equal(np.asarray(Image.open(where / f)), np.asarray(Image.open(again / f))), (name, f)
    # a second run starts from a clean folder: the earlier outputs go, the marker stays
    prepare_output(out)
    assert sorted(p.name for p in out.iterdir()) == [".scedit-quickstart"]


def test_second_process_failure_names_it_and_its_log(tmp_path):
    from scedit_cli.quickstart.jobs import SecondProcess

    out = tmp_path / "qs"
    second = SecondProcess(out, QuickstartSettings(output=out, steps_scale=0.01), threads=1)  # no data made
    try:
        with pytest.raises(SceditError, match=r"second process; its output is in .*second-process\.log"):
            second.result()
    finally:
        second.stop()


def test_cli_bad_input_one_line_errors(tmp_path, capsys, monkeypatch):
    # In this process (tests/test_cli.py checks the one-line error of a real `scedit` process).
    from scedit_cli.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.txt").write_text("x")
    for args, msg in ((["--steps-scale", "0"], "--steps-scale"), (["--style", "dots"], "--style"),
                      (["--output", str(tmp_path / "mine")], "not written by `scedit quickstart`")):
        with pytest.raises(SystemExit) as e:
            main(["quickstart", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2, err
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["x.txt"]
