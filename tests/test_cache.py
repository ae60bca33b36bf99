"""The latent / text-embedding / condition-map cache (issue 8): same losses, exact invalidation, resumable builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.cache import CacheStore, build_cache, make_plan
from scedit_cli.data import load_training_data
from scedit_cli.errors import SceditError
from scedit_cli.models import load_base
from scedit_cli.recipes import load_recipe
from scedit_cli.training import train



@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd15")
    make_tiny_pipeline(path, "sd15")
    return path


def _dataset(folder: Path, n: int = 4) -> Path:
    """Images of two shapes (one not square), COCO-style caption lists, canny maps."""
    make_dataset(folder, n=n, size=(40, 48))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r["text"] = [f"red circle {i}", f"a round red thing {i}"]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _recipe(tmp: Path, sd15: Path, data: Path, method: dict, out: str, cache: str, **data_keys):
    return write_recipe(tmp / f"{out}.toml", sd15, data, method, tmp / out,
                        data={"random_flip": True, "caption_dropout": 0.3, "cache": cache, **data_keys},
                        train={"max_steps": 3, "batch_size": 2, "gradient_accumulation_steps": 2})


@pytest.mark.parametrize("method", [{"name": "sc"}, {"name": "csc", "conditions": ["canny"], "hint_kernel": 1}])
def test_cached_and_uncached_runs_give_the_same_losses(tmp_path, sd15, method):
    data = _dataset(tmp_path / "data")
    plain = train(_recipe(tmp_path, sd15, data, method, "plain", "off"))
    assert plain.cache is None and not (data / "scedit-cache").exists()
    cached = train(_recipe(tmp_path, sd15, data, method, "cached", "build"))
    assert cached.cache.startswith("cache: using") and "encoded now" in cached.cache
    files = list((data / "scedit-cache").glob("*.safetensors"))
    assert files
    a, b = [v for _, v in plain.losses], [v for _, v in cached.losses]
    assert len(a) == len(b) == 3
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # auto finds the complete cache and encodes nothing
    again = train(_recipe(tmp_path, sd15, data, method, "again", "auto"))
    assert again.cache.startswith("cache: using") and "encoded now" not in again.cache
    np.testing.assert_allclose([v for _, v in again.losses], b, rtol=1e-6)
    assert sorted(files) == sorted((data / "scedit-cache").glob("*.safetensors"))


def _plan_for(tmp: Path, sd15: Path, data: Path, base=None, **data_keys):
    r = load_recipe(_recipe(tmp, sd15, data, {"name": "csc", "conditions": ["canny"]}, "p", "build", **data_keys))
    ds = load_training_data(r.data, ["canny"], 0)
    base = base or load_base(str(sd15))
    return make_plan(ds, base, data / "scedit-cache"), ds, base


def test_a_change_invalidates_exactly_the_affected_entries(tmp_path, sd15):
    data = _dataset(tmp_path / "data")
    plan, ds, base = _plan_for(tmp_path, sd15, data)
    stats = build_cache(plan, ds, base, "cpu", batch_size=3, chunk=5)
    # 4 rows x (plain + flipped), 4 condition entries, 8 caption alternatives + the empty prompt
    assert (stats.images, stats.conditions, stats.texts) == (8, 4, 9)
    store = CacheStore(plan.folder)
    assert plan.missing(store) == []

    # one image, one caption
    Image.open(data / "images" / "1.png").transpose(Image.Transpose.ROTATE_180).save(data / "images" / "1.png")
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    rows[2]["text"][0] = "a blue square"
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    new, ds2, _ = _plan_for(tmp_path, sd15, data, base)
    missing = set(new.missing(store))
    r1 = new.rows[1]
    assert missing == {r1.image_key, r1.flip_key, r1.cond_key, new.captions["a blue square"]}
    assert plan.rows[1].image_key != r1.image_key and plan.rows[0].image_key == new.rows[0].image_key

    # resolution: every image and condition entry, no caption
    res, _, _ = _plan_for(tmp_path, sd15, data, base, resolution=24)
    assert set(res.missing(store)) >= set(res.image_keys()) | set(res.cond_keys())
    assert not set(res.text_keys()) & set(res.missing(store)) - {new.captions["a blue square"]}

    # another text encoder: every caption, no image
    with torch.no_grad():
        base.text_encoders[0].get_input_embeddings().weight[5] += 0.01
    te, _, _ = _plan_for(tmp_path, sd15, data, base)
    assert te.vae_fp == new.vae_fp and te.text_fp != new.text_fp
    assert set(te.missing(store)) == set(te.text_keys()) | {r1.image_key, r1.flip_key, r1.cond_key}
    # another VAE: every image, no caption beyond the text encoder's
    with torch.no_grad():
        next(base.vae.parameters()).view(-1)[0] += 0.01
    v, _, _ = _plan_for(tmp_path, sd15, data, base)
    assert set(v.image_keys()) <= set(v.missing(store)) and v.vae_fp != te.vae_fp


def test_an_interrupted_build_resumes_without_reencoding_or_partial_files(tmp_path, sd15):
    data = _dataset(tmp_path / "data", n=6)
    plan, ds, base = _plan_for(tmp_path, sd15, data)
    total = len(plan.all_keys())
    calls = []

    def stop_after_first_file(done, total_):
        calls.append(done)
        if list(plan.folder.glob("*.safetensors")):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(plan, ds, base, "cpu", batch_size=2, chunk=4, on_progress=stop_after_first_file)
    files = sorted(plan.folder.glob("*"))
    assert files and all(f.suffix == ".safetensors" for f in files)  # no temp file left behind
    done_first = total - len(plan.missing(CacheStore(plan.folder)))
    assert 0 < done_first < total
    stats = build_cache(plan, ds, base, "cpu", batch_size=2, chunk=4)
    assert stats.already == done_first
    assert stats.images + stats.conditions + stats.texts == total - done_first
    assert plan.missing(CacheStore(plan.folder)) == []
    # shards split the work: a fresh folder, shard 0/2 then 1/2, together everything once
    plan.folder = tmp_path / "sharded"
    s0 = build_cache(plan, ds, base, "cpu", shard=(0, 2))
    left = len(plan.missing(CacheStore(plan.folder)))
    s1 = build_cache(plan, ds, base, "cpu", shard=(1, 2))
    n0 = s0.images + s0.conditions + s0.texts
    assert 0 < n0 < total and left == total - n0 and s1.already == 0
    assert plan.missing(CacheStore(plan.folder)) == []


def test_cache_refuses_what_it_cannot_cache_and_auto_says_why(tmp_path, sd15):
    data = _dataset(tmp_path / "data")
    r = _recipe(tmp_path, sd15, data, {"name": "sc"}, "rc", "build", center_crop=False)
    with pytest.raises(SceditError, match="data.center_crop = false"):
        train(r)
    res = train(_recipe(tmp_path, sd15, data, {"name": "sc"}, "none", "auto"))
    assert "none at" in res.cache


def test_prepare_cache_cli_then_train_uses_it(tmp_path, sd15):
    from typer.testing import CliRunner

    from scedit_cli.cli import app

    data = _dataset(tmp_path / "data")
    rec = _recipe(tmp_path, sd15, data, {"name": "sc"}, "cli", "auto")
    out = CliRunner().invoke(app, ["prepare", "cache", "--recipe", str(rec), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["missing"] == 0 and summary["images"] == 8
    secs, ips = summary["seconds"], summary["images_per_second"]  # seconds rounded to 1 ms, images/s to 0.01
    assert secs > 0 and 8 / (secs + 0.0005) - 0.01 <= ips <= 8 / max(secs - 0.0005, 1e-9) + 0.01
    again = CliRunner().invoke(app, ["prepare", "cache", "--recipe", str(rec)])  # console line; nothing left to encode
    line = " ".join(again.output.split())  # the console wraps long lines
    assert again.exit_code == 0 and " s, 0 images/s on cpu" in line and ": 0 image, 0 caption," in line
    res = train(rec)
    assert res.cache.startswith("cache: using")


def test_prepare_cache_shows_no_loader_progress_bars(tmp_path, sd15, capfd):
    """Only our own summary: diffusers' / transformers' / datasets' bars are off as in `scedit train`
    (switched on first here: another test in this process may have switched them off)."""
    import datasets
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    from scedit_cli.cli import main

    dlogging.enable_progress_bar()
    tlogging.enable_progress_bar()
    datasets.enable_progress_bars()
    try:
        data = _dataset(tmp_path / "data")
        main(["prepare", "cache", "--recipe", str(_recipe(tmp_path, sd15, data, {"name": "sc"}, "bars", "auto"))])
        err = capfd.readouterr().err
    finally:
        dlogging.disable_progress_bar()
        tlogging.disable_progress_bar()
        datasets.disable_progress_bars()
    assert "cache " in err and "images/s on cpu" in err
    assert "Loading pipeline components" not in err and "it/s]" not in err and "examples/s]" not in err, err


def test_prepare_cache_cli_without_a_recipe_caches_for_the_default_run(tmp_path, sd15):
    """--model/--input/--conditions: the recipe `recipes.dataset_recipe` makes, cached where that run reads."""
    from typer.testing import CliRunner

    from scedit_cli.cli import app
    from scedit_cli.recipes import dataset_recipe

    data = _dataset(tmp_path / "data")
    out = CliRunner().invoke(app, ["prepare", "cache", "--model", str(sd15), "--input", str(data),
                                   "--resolution", "32", "--conditions", "canny", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["missing"] == 0 and summary["images"] == 4 and summary["conditions"] == 4
    r = load_recipe(dataset_recipe(str(sd15), str(data), 32, ["canny"]))
    assert (r.method_name, r.method.conditions, r.data.resolution) == ("csc", ["canny"], 32)
    assert load_recipe(dataset_recipe(str(sd15), str(data))).method_name == "sc"
