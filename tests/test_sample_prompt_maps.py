"""Per-prompt condition images (`control_map` / `control` in a .jsonl prompts file, `PromptSpec.controls`):
each image gets its own map, images with different maps share batches, and the result is the image the
same prompt gives alone with `--control-map`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scedit_cli.errors import SceditError
from scedit_cli.models import load_base
from scedit_cli.sampling import ControlSpec, SampleSettings, compose, read_prompts, sample
from tiny_models import make_tiny_pipeline, save_random_csc_tuners


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    make_tiny_pipeline(root / "sd15")
    base = load_base(str(root / "sd15"))
    tuners = save_random_csc_tuners(base.unet, root)
    rng = np.random.default_rng(0)
    (root / "maps").mkdir()
    for i in range(3):
        for cond in ("canny", "color"):
            Image.fromarray((rng.random((32, 32, 3)) > 0.5).astype(np.uint8) * 255).save(root / "maps" / f"{cond}{i}.png")
    lines = [{"prompt": p, "control_map": {"canny": f"maps/canny{i}.png", "color": f"maps/color{i}.png"}}
             for i, p in enumerate(["a cat", "a dog", "a bird"])]
    (root / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"root": root, "base": base, "tuners": tuners}


def _settings(**kw):
    return SampleSettings(**{"steps": 2, "guidance_scale": 5.0, "grid_max": 0, **kw})


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _count_pipeline_calls(base, monkeypatch) -> list:
    calls = []
    cls = type(base.pipeline)
    orig = cls.__call__

    def counting(self, *a, **k):
        calls.append(len(k["prompt"]))
        return orig(self, *a, **k)

    monkeypatch.setattr(cls, "__call__", counting)
    return calls


def test_each_prompt_gets_its_own_map_in_one_batch(world, tmp_path, monkeypatch):
    base, root, canny = world["base"], world["root"], world["tuners"]["canny"]
    prompts = read_prompts(root / "prompts.jsonl")
    assert [c.path for c in prompts[1].controls] == [root / "maps/canny1.png", root / "maps/color1.png"]
    calls = _count_pipeline_calls(base, monkeypatch)
    batched = sample(base, prompts, tmp_path / "batched", tuners=[canny], settings=_settings(batch_size=3))
    assert calls == [3] and batched.extra["hint_encoder_calls"] == 3
    for i, p in enumerate(["a cat", "a dog", "a bird"]):
        alone = sample(base, p, tmp_path / f"alone{i}", tuners=[canny], settings=_settings(),
                       controls=[ControlSpec("canny", root / "maps" / f"canny{i}.png", 1.0, True)])
        assert np.abs(_pixels(batched.images[i]) - _pixels(alone.images[0])).max() <= 1
    # Each record names its own map, and only the condition a loaded tuner read (no colour tuner here).
    records = [json.loads(x) for x in (tmp_path / "batched" / "manifest.jsonl").read_text().splitlines()]
    assert [[c["image"] for c in r["controls"]] for r in records] == [[str(root / "maps" / f"canny{i}.png")]
                                                                      for i in range(3)]
    assert np.abs(_pixels(batched.images[0]) - _pixels(batched.images[1])).max() > 0


def test_prompt_maps_replace_the_command_map_for_their_condition(world, tmp_path):
    base, root, canny = world["base"], world["root"], world["tuners"]["canny"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a cat", "control_map": {"canny": str(root / "maps/canny2.png")}})
                                      + "\n" + json.dumps({"prompt": "a dog"}) + "\n")
    r = sample(base, read_prompts(tmp_path / "p.jsonl"), tmp_path / "out", tuners=[canny], settings=_settings(batch_size=2),
               controls=[ControlSpec("canny", root / "maps/canny0.png", 1.0, True)])
    records = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [r_["controls"][0]["image"] for r_ in records] == [str(root / "maps/canny2.png"), str(root / "maps/canny0.png")]
    assert r.extra["hint_encoder_calls"] == 2
    # Without the command's map, the prompt that has none is an error that says what to do.
    with pytest.raises(SceditError, match="give every prompt its own"):
        sample(base, read_prompts(tmp_path / "p.jsonl"), tmp_path / "out2", tuners=[canny], settings=_settings())


def test_compose_sweep_with_prompt_maps_batches_by_weights(world, tmp_path, monkeypatch):
    base, root, tuners = world["base"], world["root"], world["tuners"]
    prompts = read_prompts(root / "prompts.jsonl")
    calls = _count_pipeline_calls(base, monkeypatch)
    swept = compose(base, prompts, tmp_path / "sweep", tuners=[tuners["canny"], tuners["color"]], controls=[], sweep=3,
                    settings=_settings(batch_size=8))
    assert calls == [3, 3, 3] and len(swept.images) == 9
    alone = sample(base, prompts, tmp_path / "canny", tuners=[tuners["canny"]], settings=_settings(batch_size=8))
    for i in range(3):  # weights (1, 0): the canny tuner alone, image for image
        assert np.array_equal(_pixels(swept.images[3 * i]), _pixels(alone.images[i]))


@pytest.mark.parametrize("line, message", [
    ({"prompt": "x", "control_map": "maps/canny0.png"}, "must be an object of condition name to image path"),
    ({"prompt": "x", "control_map": {"canny": "maps/none.png"}}, r"p.jsonl:1: control_map 'canny': .*none.png not found"),
    ({"prompt": "x", "control": {"canny": "maps/canny0.png"}, "control_map": {"canny": "maps/canny0.png"}},
     "given twice"),
])
def test_bad_prompt_maps_name_the_line(world, tmp_path, line, message):
    (tmp_path / "maps").symlink_to(world["root"] / "maps")
    (tmp_path / "p.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(SceditError, match=message):
        read_prompts(tmp_path / "p.jsonl")
