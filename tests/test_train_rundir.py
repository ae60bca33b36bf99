"""A training run's output folder: a new run refuses another run's results unless --overwrite, a resume
refuses a changed recipe, and a damaged newest checkpoint is named and stepped over."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.cli import main
from scedit_cli.training import train


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir")
    make_tiny_pipeline(root / "sd15", "sd15")
    make_dataset(root / "data", n=2, conditions=())
    return root


def recipe(env, tmp_path, name="r", **sections):
    sections.setdefault("train", {})
    sections["train"] = {"max_steps": 2, **sections["train"]}
    return write_recipe(tmp_path / f"{name}.toml", env / "sd15", env / "data", {"name": "sc"}, tmp_path / "o",
                        checkpoint={"every": 1, "keep_last": 3}, **sections)


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(["train", *map(str, args)])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return e.value.code, lines[0]


def test_a_new_run_refuses_another_runs_folder_and_overwrite_starts_afresh(env, tmp_path, capsys):
    first = recipe(env, tmp_path, train={"max_steps": 3})
    train(first)
    before = snapshot(tmp_path / "o")
    code, line = cli([recipe(env, tmp_path, "second")], capsys)
    assert code == 2 and str(tmp_path / "o") in line and "step 3" in line
    assert "--resume" in line and "--overwrite" in line and "train.output_dir" in line
    assert snapshot(tmp_path / "o") == before, "nothing written or changed"
    # --overwrite: the old run's checkpoints go (step 3 is not left beside the new run's 1 and 2)
    res = train(recipe(env, tmp_path, "second"), overwrite=True)
    steps = sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir())
    assert res.steps == 2 and steps == ["step-00000001", "step-00000002"]
    with pytest.raises(Exception, match="give one"):
        train(first, resume="latest", overwrite=True)


def test_a_new_run_refuses_a_folder_with_trained_weights(env, tmp_path, capsys):
    (tmp_path / "o" / "tuner").mkdir(parents=True)
    (tmp_path / "o" / "tuner" / "tuner.safetensors").write_bytes(b"weights of an earlier run")
    code, line = cli([recipe(env, tmp_path)], capsys)
    assert code == 2 and "trained weights (tuner)" in line and "--overwrite" in line
    assert snapshot(tmp_path / "o") == {p: b"weights of an earlier run" for p in [
        (tmp_path / "o" / "tuner" / "tuner.safetensors").relative_to(tmp_path / "o")]}


def test_resume_refuses_a_changed_recipe_naming_the_keys(env, tmp_path, capsys):
    train(recipe(env, tmp_path))
    before = snapshot(tmp_path / "o")
    changed = recipe(env, tmp_path, "changed", train={"max_steps": 4, "learning_rate": 5e-4},
                     data={"random_flip": True})
    code, line = cli([changed, "--resume", "latest"], capsys)
    assert code == 2 and "step-00000002" in line
    assert "train.learning_rate 0.001 -> 0.0005" in line and "data.random_flip false -> true" in line
    assert "max_steps" not in line.split("differs")[1].split(";")[0], "max_steps may change"
    assert snapshot(tmp_path / "o") == before
    # max_steps, [logging], [checkpoint], [validation] may change
    ok = recipe(env, tmp_path, "ok", train={"max_steps": 3}, logging={"every": 2})
    assert train(ok, resume="latest").steps == 3


def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_resumed_bit_exactly(env, tmp_path, capsys):
    train(recipe(env, tmp_path, train={"max_steps": 3}))
    reference = load_file(tmp_path / "o" / "tuner" / "tuner.safetensors")
    ckpts = tmp_path / "o" / "checkpoints"
    (ckpts / "step-00000003" / "trainable.safetensors").write_bytes(b"\0" * 10)  # truncated
    (ckpts / "step-00000002" / "optimizer.safetensors").write_bytes(b"garbage")
    res = train(recipe(env, tmp_path, train={"max_steps": 3}), resume="latest")
    err = capsys.readouterr().err
    assert "step-00000003/trainable.safetensors: damaged" in err and "step-00000002/optimizer.safetensors" in err
    assert res.resumed_from.endswith("step-00000001") and res.steps == 3
    got = load_file(tmp_path / "o" / "tuner" / "tuner.safetensors")
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["step-00000001", "step-00000002", "step-00000002.damaged", "step-00000003",
                     "step-00000003.damaged"]


def test_a_damaged_checkpoint_named_explicitly_is_refused(env, tmp_path, capsys):
    train(recipe(env, tmp_path))
    bad = tmp_path / "o" / "checkpoints" / "step-00000002"
    (bad / "trainable.safetensors").write_bytes(b"\0" * 10)
    before = snapshot(tmp_path / "o")
    code, line = cli([recipe(env, tmp_path, train={"max_steps": 3}), "--resume", bad], capsys)
    assert code == 2 and f"{bad / 'trainable.safetensors'}: damaged" in line and "Error" in line
    assert snapshot(tmp_path / "o") == before
