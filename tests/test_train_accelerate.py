"""Two CPU processes through `accelerate launch`: same result shape, a loss reported by rank 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.training import train


def test_two_process_accelerate_launch(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is installed with the package"
    make_tiny_pipeline(tmp_path / "sd15", "sd15")
    make_dataset(tmp_path / "data", n=4)
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "sd15", tmp_path / "data", {"name": "sc"}, tmp_path / "multi",
                          train={"max_steps": 2, "batch_size": 4}, checkpoint={"every": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "scedit_cli.cli", "train", str(recipe), "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)  # one JSON document: only rank 0 reports
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    multi = load_file(tmp_path / "multi" / "tuner" / "tuner.safetensors")

    single = train(recipe, overrides=[f'train.output_dir="{tmp_path / "single"}"'])
    ref = load_file(tmp_path / "single" / "tuner" / "tuner.safetensors")
    assert multi.keys() == ref.keys()
    for k in ref:
        assert multi[k].shape == ref[k].shape
        # Same samples and per-sample noise; only the gradient all-reduce's float order differs.
        torch.testing.assert_close(multi[k], ref[k], rtol=1e-3, atol=2e-5)
    assert summary["final_loss"] == pytest.approx(single.final_loss, rel=1e-4)
