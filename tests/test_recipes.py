"""Every recipe in recipes/ validates and dry-runs (meta device, no weights, no data needed);
the recipe parser is strict and its overrides and paths behave."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from scedit_cli.errors import SceditError
from scedit_cli.recipe_parse import parse_override
from scedit_cli.recipes import load_recipe
from scedit_cli.training import train

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))

# Trainable parameters (millions) the paper reports, for the recipes that reproduce them exactly.
PAPER_M = {
    "table1-full": 859.52, "table1-lora-r64": 23.94, "table1-lora-r6": 2.24, "table1-scedit": 19.68,
    "table1-scedit-ratio10": 1.98, "table5a-ratio5": 3.94, "table5b-skips-0-11": 3.48,
    "table5b-skips-0-3-6-9-11": 7.79, "table5c-conv": 22.13, "table2-controlnet": 364.23,
    "table2-t2i-adapter": 77.37, "table2-scedit-k1": 28.82, "table2-scedit-k3": 99.11,
    "table6b-skips-0-3-4-6-7-9-11": 17.14,
}
EXPECTED = {
    "table1": 5, "table2": 6, "table5": 4, "table6": 2, "style": 6, "fig7": 8, "sdxl": 3,
}


def test_every_experiment_has_a_recipe():
    names = [p.stem for p in RECIPES]
    for prefix, n in EXPECTED.items():
        assert sum(1 for s in names if s.startswith(prefix)) == n, prefix
    for cond in ("canny", "depth", "hed", "segmentation", "pose", "color", "inpainting", "outpainting"):
        assert f"fig7-{cond}" in names
    for style in ("3d", "anime", "flat-illustration", "oil-painting", "sketch", "watercolor"):
        assert f"style-{style}" in names
    for cond in ("canny", "depth", "color"):  # the official release's SDXL controllers
        assert f"sdxl-{cond}" in names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_dry_run(path, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # weights are never needed for a plan
    result = train(path, dry_run=True)
    plan = result.plan.to_dict()
    assert result.dry_run and plan["trainable_parameters"] > 0
    assert plan["steps"] in (100000, 1500)
    r = load_recipe(path)
    assert r.train.learning_rate == 5e-5 and r.train.weight_decay == 0.01 and r.train.mixed_precision == "fp16"
    assert r.data.resolution == (1024 if r.model.arch == "sdxl" else 512)
    assert r.data.center_crop and r.train.lr_scheduler == "constant"
    stem = path.stem
    assert r.train.batch_size == (8 if stem.startswith("style") else 32 if stem.startswith(("table1", "table5")) else 64)
    if path.stem in PAPER_M:
        assert plan["trainable_parameters_m"] == pytest.approx(PAPER_M[path.stem], abs=0.005), plan["method"]
    if stem.startswith("sdxl"):
        assert plan["sdxl"] and r.method.conditions == [stem.split("-", 1)[1]]
        assert plan["trainable_parameters"] == sdxl_csc_k3_params(), "the `bench params` SDXL k=3 row"
    assert "dataset_error" in plan and "not found" in plan["dataset_error"]  # the datasets are the user's to fetch
    text = path.read_text()
    assert "# Data:" in text, "each recipe documents what to download"


@functools.lru_cache(maxsize=1)
def sdxl_csc_k3_params() -> int:
    from scedit_cli.bench.params import sdxl_rows

    with torch.device("meta"):
        return next(r.params for r in sdxl_rows() if r.setting == "SCEdit k=3")


def _write(tmp_path, body: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(body)
    return p


BASIC = """
[model]
source = "./model"
[data]
source = "data"
[method]
name = "sc"
[train]
output_dir = "out"
"""


def test_paths_resolve_against_the_recipe_and_overrides_against_cwd(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path.parent)
    r = load_recipe(_write(tmp_path, BASIC), ["train.output_dir=elsewhere", "train.max_steps=7",
                                               "method.skips=[0, 11]"])
    assert r.model.source == str(tmp_path / "model")
    assert r.data.source == str(tmp_path / "data")
    assert r.train.output_dir == str(tmp_path.parent / "elsewhere")
    assert r.train.max_steps == 7 and r.method.skips == [0, 11]


@pytest.mark.parametrize("body, overrides, value", [
    (BASIC, [], "auto"), (BASIC + "lean = false\n", [], False), (BASIC, ["train.lean=true"], True),
    (BASIC + "lean = true\n", ["train.lean=auto"], "auto"),
])
def test_train_lean_takes_true_false_or_auto(tmp_path, body, overrides, value):
    assert load_recipe(_write(tmp_path, body), overrides).train.lean == value
    prepack_body = body.replace("lean =", "prepack =")
    prepack_overrides = [o.replace("train.lean", "train.prepack") for o in overrides]
    assert load_recipe(_write(tmp_path, prepack_body), prepack_overrides).train.prepack == value


def test_hub_ids_stay_hub_ids(tmp_path):
    r = load_recipe(_write(tmp_path, BASIC.replace('"./model"', '"org/some-model"')))
    assert r.model.source == "org/some-model"


def test_parse_override_values():
    assert parse_override("train.learning_rate=1e-4") == ("train.learning_rate", 1e-4)
    assert parse_override("data.random_flip=true") == ("data.random_flip", True)
    assert parse_override("data.source=./x/y") == ("data.source", "./x/y")
    assert parse_override('method.conditions=["canny", "depth"]') == ("method.conditions", ["canny", "depth"])
    with pytest.raises(SceditError, match="KEY=VALUE"):
        parse_override("train.max_steps")


def _csc(settings: str) -> str:
    return BASIC.replace('name = "sc"', 'name = "csc"\nconditions = ["canny"]\n' + settings)


@pytest.mark.parametrize("body, key, fix", [
    (BASIC + "foo = 1\n", "train.foo", "accepts"),
    (BASIC.replace('name = "sc"', 'name = "sc"\nrank = 4'), "method.rank", "[method] accepts"),
    (BASIC.replace('name = "sc"', 'name = "scc"'), "method.name", "did you mean 'sc'"),
    (BASIC + "batch_size = 3\ngradient_accumulation_steps = 2\n", "train.gradient_accumulation_steps", "divide"),
    (BASIC + "learning_rate = true\n", "train.learning_rate", "number"),
    (BASIC + "learning_rate = nan\n", "train.learning_rate", "not a finite number"),
    (BASIC + "max_grad_norm = inf\n", "train.max_grad_norm", "not a finite number"),
    (BASIC + "[validation]\nguidance_scale = -inf\n", "validation.guidance_scale", "not a finite number"),
    (BASIC.replace('[method]\nname = "sc"', '[method]\nname = "controlnet"\nconditions = ["canny", "depth"]'),
     "method", "use method 'csc'"),
    (BASIC.replace("[model]", "[modle]"), "modle", "did you mean 'model'"),
    (BASIC.replace('source = "data"', ''), "data.source", "add `source = ...`"),
    (BASIC + "mixed_precision = 'no'\n[model2]\n", "model2", "[model]"),
    (BASIC.replace('source = "data"', 'source = "data"\nresolution = 500'), "data.resolution", "multiple of 8"),
    (BASIC.replace('source = "data"', 'source = "data"\nresolution = 512\nbuckets = true\nbucket_step = 4'),
     "data.bucket_step", "multiple of 8"),
    (BASIC + "lean = 'yes'\n", "train.lean", 'use true, false or "auto"'),
    (BASIC + "lean = 1\n", "train.lean", "boolean (true/false) or string"),
    (BASIC + "prepack = 'on'\n", "train.prepack", 'use true, false or "auto"'),
    # [method] settings are checked with the recipe (no torch), not when the model is set up.
    (BASIC.replace('name = "sc"', 'name = "sc"\nop = "mlp"'), "method.op", "choose one of linear"),
    (BASIC.replace('name = "sc"', 'name = "sc"\nratio = 0'), "method.ratio", "must be > 0"),
    (BASIC.replace('name = "sc"', 'name = "sc"\nskips = [0, -1]'), "method.skips", "count from 0"),
    (_csc("hint_kernel = 2"), "method.hint_kernel", "odd number"),
    (_csc("weights = [0.5, 0.5]"), "method.weights", "one alpha per condition"),
    (_csc("pre_hint_dim_ratio = 0.01"), "method.pre_hint_dim_ratio", "ratio >= 0.0625"),
    (BASIC.replace('name = "sc"', 'name = "lora"\nrank = 0'), "method.rank", "must be >= 1"),
    (BASIC.replace('name = "sc"', 'name = "lora"\ndropout = 1.0'), "method.dropout", "[0, 1)"),
    (BASIC.replace('name = "sc"', 'name = "controlnet-xs"\nsize_ratio = 1.5'), "method.size_ratio", "(0, 1]"),
    (BASIC.replace('name = "sc"', 'name = "t2i-adapter"\nnum_res_blocks = 0'), "method.num_res_blocks", ">= 1"),
])
def test_strict_validation_names_file_key_and_fix(tmp_path, body, key, fix):
    path = _write(tmp_path, body)
    with pytest.raises(SceditError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {key}") and fix in msg and "\n" not in msg, msg


def test_not_toml(tmp_path):
    with pytest.raises(SceditError, match="not valid TOML"):
        load_recipe(_write(tmp_path, "[model\nsource="))


def test_overrides_refuse_nan_and_inf(tmp_path):
    path = _write(tmp_path, BASIC)
    for value in ("nan", "inf", "-inf"):
        with pytest.raises(SceditError) as e:
            load_recipe(path, [f"train.learning_rate={value}"])
        assert str(e.value).startswith(f"{path}: --set train.learning_rate: {float(value)!r} is not a finite number")


def test_one_registry_names_each_method_and_its_settings():
    """`methods.config` (torch-free, read by `load_recipe`) and the implementations agree: each
    method's class takes its name and settings from the registry, and the tuner OPs a recipe may
    name are the ones `tuners.ops` builds."""
    from scedit_cli.methods import METHODS, build_method
    from scedit_cli.methods.config import METHOD_CONFIGS
    from scedit_cli.tuners.config import OP_NAMES
    from scedit_cli.tuners.ops import OPS

    assert list(METHODS) == list(METHOD_CONFIGS)
    for name, cls in METHODS.items():
        assert cls.name == name and cls.Config is METHOD_CONFIGS[name]
    assert set(OPS) == set(OP_NAMES)
    with pytest.raises(SceditError, match="^method.rank: must be >= 1"):
        build_method("lora", {"rank": 0})
    with pytest.raises(SceditError, match="unknown method 'loar'"):
        build_method("loar")
