"""A training run's output folder: a new run refuses another run's results unless --overwrite, a resume
refuses a changed recipe, and a damaged newest checkpoint is named and stepped over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.cli import main
from scedit_cli.errors import SceditError
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


def test_sigint_while_saving_the_tuner_then_resume_writes_it(env, tmp_path):
    """A real SIGINT, sent by the process to itself while the final tuner is being written: exit 130,
    no half-written tuner; `--resume latest` from the step-2 checkpoint then writes the same tuner."""
    import os
    import signal
    import subprocess
    import sys

    r = recipe(env, tmp_path)
    reference_run = train(r, overrides=[f'train.output_dir="{tmp_path / "reference"}"'])
    reference = load_file(tmp_path / "reference" / "tuner" / "tuner.safetensors")
    script = (
        "import os, signal, sys, safetensors.torch as st\n"
        "save = st.save_file\n"
        "def interrupted(tensors, filename, *a, **k):\n"
        "    save(tensors, filename, *a, **k)\n"
        "    if filename.endswith('tuner.safetensors'):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "st.save_file = interrupted\n"
        "from scedit_cli.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    p = subprocess.run([sys.executable, "-c", script, "train", str(r)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"},
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # see test_interrupt
    assert p.returncode == 130, p.stderr[-2000:]
    assert "interrupted" in p.stderr and "Traceback" not in p.stderr
    out = tmp_path / "o"
    assert not (out / "tuner").exists() and not [q for q in out.iterdir() if q.name.startswith(".")]
    assert (out / "checkpoints" / "step-00000002" / "state.json").is_file()
    res = train(r, resume="latest")
    assert res.steps == 2 and res.losses == reference_run.losses
    got = load_file(out / "tuner" / "tuner.safetensors")
    assert all(torch.equal(got[k], reference[k]) for k in reference)


def test_a_key_the_checkpoint_recipe_lacks_counts_as_its_default():
    """A checkpoint written before a recipe key existed resumes when the key is at its default."""
    from scedit_cli.recipes import load_recipe
    from scedit_cli.training.rundir import check_resume_recipe, recipe_defaults

    r = load_recipe({"model": {"source": "sd15"}, "data": {"source": "data"}, "method": {"name": "sc"},
                     "train": {"output_dir": "run"}})
    new = r.to_dict()
    old = json.loads(json.dumps(new))
    del old["train"]["lean"]  # as an older scedit stored it
    check_resume_recipe(Path("ckpt"), old, new, recipe_defaults(r))
    new["train"]["lean"] = False
    with pytest.raises(SceditError, match=r'train.lean "auto" -> false'):
        check_resume_recipe(Path("ckpt"), old, new, recipe_defaults(r))
    with pytest.raises(SceditError, match=r'train.lean "\(absent\)" -> false'):
        check_resume_recipe(Path("ckpt"), old, new)
