"""Resume exactness: N steps, a real `kill -9` (or Ctrl-C) of the training process, resume to 2N
steps: the tuner is bit-identical to an uninterrupted 2N-step run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.training import train

pytestmark = pytest.mark.slow  # run first: see conftest.py

N = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_tiny_pipeline(root / "sd15", "sd15")
    make_dataset(root / "data", n=3)
    recipe = write_recipe(root / "r.toml", root / "sd15", root / "data",
                          {"name": "csc", "conditions": ["canny"], "hint_kernel": 1}, root / "unused",
                          train={"max_steps": 2 * N, "batch_size": 4}, checkpoint={"every": N, "keep_last": 2},
                          data={"random_flip": True, "caption_dropout": 0.3})
    train(recipe, overrides=[f'train.output_dir="{root / "reference"}"'])
    return root, recipe, load_file(root / "reference" / "tuner" / "tuner.safetensors")


def _start(recipe: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "scedit_cli.cli", "train", str(recipe), "--set", f"train.output_dir={out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # see test_interrupt.interrupt
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout=120.0):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < timeout, "no checkpoint in time"
        time.sleep(0.01)


def _resume_and_compare(recipe, out: Path, reference):
    result = train(recipe, overrides=[f'train.output_dir="{out}"'], resume="latest")
    assert result.steps == 2 * N and result.resumed_from
    got = load_file(out / "tuner" / "tuner.safetensors")
    assert got.keys() == reference.keys()
    for k in reference:
        assert torch.equal(got[k], reference[k]), f"{k} differs after resume"
    return result


def kill_9_after_checkpoint(recipe: Path, out: Path) -> None:
    """Start `scedit train` in a subprocess and SIGKILL it once step N's checkpoint is complete."""
    proc = _start(recipe, out)
    _wait_for(out / "checkpoints" / f"step-{N:08d}" / "state.json", proc)
    assert proc.poll() is None, "the run must still be going when it is killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "tuner").exists(), "killed before the end"


def test_kill_9_between_checkpoints_then_resume_is_bit_identical(setup, tmp_path):
    root, recipe, reference = setup
    out = tmp_path / "killed"
    kill_9_after_checkpoint(recipe, out)
    result = _resume_and_compare(recipe, out, reference)
    assert result.resumed_from.endswith(f"step-{N:08d}")
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")], "no half-written checkpoint left"


def test_ctrl_c_saves_a_checkpoint_and_resume_is_bit_identical(setup, tmp_path):
    root, recipe, reference = setup
    out = tmp_path / "interrupted"
    proc = _start(recipe, out)
    _wait_for(out / "checkpoints" / f"step-{N:08d}" / "state.json", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted at step" in err and "Traceback" not in err
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert steps[-1] >= N
    _resume_and_compare(recipe, out, reference)
