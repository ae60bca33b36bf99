"""`scedit eval`: FID through the CLI with a local Inception weight file, errors, and a recipe's efficiency."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from scedit_cli.cli import app, main
from test_metrics_fid import write_images, write_inception_weights


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
