"""`scedit eval`: FID through the CLI with a local Inception weight file, errors, and a recipe's efficiency."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from scedit_cli.cli import app, main
from test_metrics_fid import write_images, write_inception_weights


class Evil:  # not a tensor: a weights-only load refuses it
    pass


def test_eval_fid_cli_json(tmp_path):
    w = write_inception_weights(tmp_path / "w.pth")
    gen = write_images(tmp_path / "gen", 3, seed=0)
    ref = write_images(tmp_path / "ref", 3, seed=1)
    r = CliRunner().invoke(app, ["eval", "--fid", "--generated", str(gen), "--reference", str(ref),
                                 "--inception-weights", str(w), "--dims", "64", "--stats-cache",
                                 str(tmp_path / "c"), "--json", "--out", str(tmp_path / "fid.json")])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["fid"]["fid"] > 0 and data["fid"]["dims"] == 64
    assert json.loads((tmp_path / "fid.json").read_text()) == data
    # 3 images for 64 dimensions: said, with what to do; 64 is already the smallest layer
    warning = data["fid"]["warnings"][0]
    assert warning.startswith("only 3 generated image(s) for 64-d Inception features") and "more than 64 images" in warning
    assert f"warning: {warning}\n" in r.stderr


def test_fid_with_fewer_images_than_dimensions_offers_smaller_features():
    from scedit_cli.metrics.fid import few_images_warning

    w = few_images_warning({"generated": 20, "reference": 300}, 2048)
    assert "only 20 generated image(s) for 2048-d" in w and "--dims 768/192/64" in w
    assert "or --dims 192 (a smaller" in few_images_warning({"generated": 500, "reference": 300}, 2048)
    assert few_images_warning({"generated": 3000, "reference": -1}, 2048) is None  # a .npz without a count


def test_inception_weights_that_are_not_weights_are_one_line(tmp_path, capsys):
    gen = write_images(tmp_path / "gen", 2, seed=0)
    (tmp_path / "notes.pth").write_text("not weights")
    torch.save({"x": Evil()}, tmp_path / "code.pth")
    for name, says in (("notes.pth", "not a PyTorch weights file"), ("code.pth", "holds more than tensors")):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--fid", "--generated", str(gen), "--reference", str(gen), "--inception-weights",
                  str(tmp_path / name), "--no-cache"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and str(tmp_path / name) in err and says in err, err
        assert "weights_only` set to `False`" not in err


@pytest.mark.parametrize("argv, text", [
    (["eval"], "nothing to evaluate"),
    (["eval", "--fid", "--generated", "x"], "--reference"),
    (["eval", "--params", "no-such.toml"], "no such recipe"),
    (["eval", "--control", "--generated", "."], "manifest.jsonl"),
])
def test_eval_errors_are_one_line_exit_2(argv, text, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and text in err and "Traceback" not in err and err.count("\n") == 1


def test_eval_recipe_params_memory_time(tmp_path):
    from tiny_models import make_tiny_pipeline

    make_tiny_pipeline(tmp_path / "model")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nsource = "{tmp_path / "model"}"\n[data]\nsource = "{tmp_path}"\nresolution = 64\n'
                      '[method]\nname = "sc"\nratio = 2\n[train]\nbatch_size = 1\noutput_dir = "out"\n')
    r = CliRunner().invoke(app, ["eval", "--params", "--memory", "--time", str(recipe), "--steps", "1",
                                 "--warmup", "1", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["recipe"]
    assert rec["method"] == "sc" and rec["trainable_params"] > 0
    assert rec["memory"]["saved_encoder_bytes"] == 0 and rec["memory"]["peak_bytes"] > 0
    assert rec["timing"]["steps"] == 1 and rec["timing"]["median_s"] > 0
    # the table's footnote names only the sources of what was measured
    r = CliRunner().invoke(app, ["eval", "--params", str(recipe)])
    assert r.exit_code == 0 and "trainable parameters" in r.output, r.output
    assert "pytorch-fid" not in r.output and "training loop's own step" not in r.output, r.output


def test_evaluate_from_python(tmp_path):
    """`metrics.evaluate` is what `scedit eval` runs: typed results, the same JSON, the same checks."""
    from scedit_cli.errors import SceditError
    from scedit_cli.metrics.evaluate import EvalSettings, evaluate
    from scedit_cli.tuners import SCTuner, SCTunerConfig, SkipLayout
    from tiny_models import make_tiny_pipeline

    w = write_inception_weights(tmp_path / "w.pth")
    gen = write_images(tmp_path / "gen", 3, seed=0)
    ref = write_images(tmp_path / "ref", 3, seed=1)
    pipe = make_tiny_pipeline(tmp_path / "model")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nsource = "{tmp_path / "model"}"\n[data]\nsource = "{tmp_path}"\nresolution = 64\n'
                      '[method]\nname = "sc"\nratio = 2\n[train]\nbatch_size = 1\noutput_dir = "out"\n')
    events = []
    res = evaluate(EvalSettings(fid=True, generated=gen, reference=str(ref), inception_weights=w, dims=64,
                                stats_cache=tmp_path / "c", params=True, recipe=recipe),
                   on_control=lambda kind, n: events.append(kind))
    assert res.control is None and events == []
    assert res.fid.fid > 0 and (res.fid.generated_count, res.fid.reference_count, res.fid.dims) == (3, 3, 64)
    assert res.warnings == res.fid.warnings and res.warnings[0].startswith("only 3 generated image(s)")
    tuner = SCTuner(SCTunerConfig(ratio=2), SkipLayout.from_unet(pipe.unet))
    assert res.recipe.method == "sc" and res.recipe.trainable_params == tuner.trainable_parameters
    assert "memory" not in res.to_dict()["recipe"] and "timing" not in res.to_dict()["recipe"]  # only what was asked for
    assert set(res.to_dict()) == {"fid", "recipe"} and res.to_dict()["fid"] == res.fid.to_dict()
    with pytest.raises(SceditError, match="nothing to evaluate"):
        evaluate(EvalSettings())
    with pytest.raises(SceditError, match="--control needs --generated"):
        evaluate(EvalSettings(control=True))
