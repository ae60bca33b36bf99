"""Model cards: the tuner folders `scedit train` writes are Hub-ready (README.md front matter + body)."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
from huggingface_hub import ModelCard

from scedit_cli.training import train
from scedit_cli.tuners.card import caption_trigger
from hub_helpers import add_to_cache, hf_cache  # noqa: F401  (hf_cache: a fixture)
from train_helpers import make_dataset, make_tiny_pipeline, write_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LICENSE_README = "---\nlicense: creativeml-openrail-m\ntags:\n- stable-diffusion\n---\n\n# a tiny base\n"


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd15")
    make_tiny_pipeline(path, "sd15")
    (path / "README.md").write_text(LICENSE_README)
    return path


def _dataset(folder, caption):
    data = make_dataset(folder, n=2)
    rows = [json.loads(x) for x in (data / "metadata.jsonl").read_text().splitlines()]
    (data / "metadata.jsonl").write_text("".join(json.dumps({**r, "text": caption}) + "\n" for r in rows))
    return data


def _toml_block(text: str) -> dict:
    return tomllib.loads(re.search(r"```toml\n(.*?)```", text, re.S).group(1))


def test_caption_trigger():
    assert caption_trigger(["a cat", "<sce> a red circle"]) == "<sce>"
    assert caption_trigger(["a cat in <sce>-like style", "a dog"]) is None  # a word of its own only


def test_csc_training_writes_a_hub_ready_card(sd15, tmp_path):
    data = _dataset(tmp_path / "data", "<sce> red circle")
    recipe = write_recipe(tmp_path / "canny.toml", sd15, data, {"name": "csc", "conditions": ["canny"], "hint_kernel": 1},
                          tmp_path / "out", train={"max_steps": 2}, validation={"every": 2, "num_images": 1, "steps": 1})
    result = train(recipe, overrides=["train.learning_rate=0.002"])
    folder = tmp_path / "out" / "tuner"
    card = ModelCard.load(folder / "README.md")
    d = card.data.to_dict()
    assert d["library_name"] == "scedit" and d["tags"] == ["scedit", "csc-tuner", "canny"]
    assert d["license"] == "creativeml-openrail-m", "read from the base folder's README front matter"
    assert d["instance_prompt"] == "<sce>"
    assert "base_model" not in d, "a local base folder is no Hub model id"
    text = card.text
    assert "| training steps | 2 |" in text and f"| final loss | {result.final_loss:.4f} |" in text
    assert "| trainable parameters | " in text and "`canny`" in text
    # the last validation grid, copied in and shown
    grid = tmp_path / "out" / "samples" / "step-00000002.png"
    assert (folder / "validation.png").read_bytes() == grid.read_bytes()
    assert "![validation samples](validation.png)" in text and "(step 2)" in text
    # how to use it: scedit, diffusers, ComfyUI
    assert "-t USER/REPO" in text and "--control canny:photo.jpg" in text
    assert 'scedit_cli.apply_tuners(pipe, ["USER/REPO"], conditions={"canny": Image.open("photo.jpg")})' in text
    assert "SCEdit Control" in text
    # the recipe as written (with the --set override) reads back as TOML
    raw = _toml_block(text)
    assert raw["method"]["name"] == "csc" and raw["train"]["learning_rate"] == 0.002
    # uploadable as it is: only the card, the tuner files and the grid, no temp files
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "tuner.safetensors", "tuner_config.json",
                                                       "validation.png"]


def test_sc_card_for_a_hub_base(sd15, hf_cache, tmp_path):  # noqa: F811
    files = {str(p.relative_to(sd15)): p for p in sd15.rglob("*") if p.is_file()}
    add_to_cache(hf_cache, "someone/tiny-sd", files)
    data = _dataset(tmp_path / "data", "red circle")
    recipe = write_recipe(tmp_path / "style.toml", "someone/tiny-sd", data, {"name": "sc", "ratio": 2},
                          tmp_path / "out", train={"max_steps": 1})
    train(recipe)
    card = ModelCard.load(tmp_path / "out" / "tuner" / "README.md")
    d = card.data.to_dict()
    assert d["base_model"] == "someone/tiny-sd" and d["tags"] == ["scedit", "sc-tuner"]
    assert d["license"] == "creativeml-openrail-m", "read from the README in the HF cache"
    assert "instance_prompt" not in d, "no <sce> in the captions"
    assert "scedit sample -m someone/tiny-sd -t USER/REPO" in card.text
    assert 'DiffusionPipeline.from_pretrained("someone/tiny-sd")' in card.text
    assert "Validation samples" not in card.text and not (tmp_path / "out" / "tuner" / "validation.png").exists()


def test_no_license_when_the_base_states_none(sd15, tmp_path):
    from scedit_cli.tuners.card import base_license

    assert base_license(str(sd15)) == "creativeml-openrail-m"
    bare = tmp_path / "bare"
    shutil.copytree(sd15, bare)
    (bare / "README.md").unlink()
    assert base_license(str(bare)) is None
    (bare / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert base_license(str(bare)) is None
    assert base_license("nobody/not-cached") is None and base_license(None) is None
