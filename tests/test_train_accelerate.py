"""Training through accelerate: two CPU processes (gloo) under `accelerate launch`, DDP as what
synchronises gradients, resuming with another process count, the example launch configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.training import train

pytestmark = pytest.mark.slow  # run first: see conftest.py

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"

# Runs `scedit` under the launcher, recording the size of every Python-level all_reduce: the
# loss and skip counts (a few numbers) are reduced that way; gradients must go through DDP's
# reducer, which calls the process group directly and never this function.
LAUNCHED = """
import json, os, runpy, sys
import torch.distributed as dist
sizes, real = [], dist.all_reduce
def counted(tensor, *args, **kwargs):
    sizes.append(tensor.numel())
    return real(tensor, *args, **kwargs)
dist.all_reduce = counted
import atexit
atexit.register(lambda: open(os.path.join({out!r}, "allreduce-" + os.environ["RANK"] + ".json"), "w").write(json.dumps(sizes)))
sys.argv = ["scedit", *sys.argv[1:]]
runpy.run_module("scedit_cli.cli", run_name="__main__")
"""


def test_two_processes_resume_a_one_process_run_through_ddp(tmp_path):
    """One process trains steps 1-2 (checkpoint), two processes resume it for steps 3-4: the tuner
    equals an uninterrupted one-process run within fp tolerance, gradients were averaged by DDP
    (the prepared module is DistributedDataParallel and no gradient-sized all_reduce ran outside
    its reducer), an unreadable sample leaves one process an empty micro-batch without a hang, and
    skips are counted over both processes."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is installed with the package"
    make_tiny_pipeline(tmp_path / "sd15", "sd15")
    data = make_dataset(tmp_path / "data", n=4)
    (data / "images" / "2.png").write_bytes(b"not a png")  # one sample of every step is skipped
    # batch 4 over 2 processes x 2 micro-batches: one sample per micro-batch, so the bad one empties one.
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "sd15", data, {"name": "sc"}, tmp_path / "single",
                          train={"max_steps": 4, "batch_size": 4, "gradient_accumulation_steps": 2,
                                 "max_grad_norm": 1.0},
                          checkpoint={"every": 2, "keep_last": 5})
    single = train(recipe)
    ref = load_file(tmp_path / "single" / "tuner" / "tuner.safetensors")
    assert single.skipped == 4 and single.plan["prepared_module"].endswith("TrainableModel")

    shutil.copytree(tmp_path / "single" / "checkpoints" / "step-00000002",
                    tmp_path / "multi" / "checkpoints" / "step-00000002")
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(out=str(tmp_path)))
    # `accelerate launch --cpu --num_processes 2` starts ONE process (its simple launcher, unless an
    # mpirun hostfile is given); torchrun's launcher with accelerate's CPU switch starts two (gloo).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    p = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", str(script), "train", str(recipe), "--resume", "latest", "--json",
         "--set", f'train.output_dir="{tmp_path / "multi"}"'],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)  # one JSON document: only rank 0 reports
    assert summary["steps"] == 4 and summary["resumed_from"].endswith("step-00000002")
    assert summary["plan"]["prepared_module"] == "torch.nn.parallel.distributed.DistributedDataParallel"
    assert summary["plan"]["distributed_type"] == "MULTI_CPU"
    assert summary["skipped"] == single.skipped
    n_trainable = sum(t.numel() for t in ref.values())
    for rank in (0, 1):
        sizes = json.loads((tmp_path / f"allreduce-{rank}.json").read_text())
        assert sizes and max(sizes) <= 2 < n_trainable, f"rank {rank}: a gradient-sized all_reduce outside DDP"

    multi = load_file(tmp_path / "multi" / "tuner" / "tuner.safetensors")
    assert multi.keys() == ref.keys()
    for k in ref:
        # Same samples and per-sample noise; only the float order of the gradient average differs.
        torch.testing.assert_close(multi[k], ref[k], rtol=1e-3, atol=2e-5)
    assert summary["final_loss"] == pytest.approx(single.final_loss, rel=1e-4)
    # The same step-4 checkpoint bar float order: the optimizer state was averaged the same way.
    a = load_file(tmp_path / "multi" / "checkpoints" / "step-00000004" / "optimizer.safetensors")
    b = load_file(tmp_path / "single" / "checkpoints" / "step-00000004" / "optimizer.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-7)


# Rank 1 alone gets SIGTERM during its second step (as a scheduler may signal one node).
ONE_RANK_SIGNALLED = """
import os, runpy, signal, sys
import scedit_cli.training.run as run_module
real = run_module.one_step
def one_step(run, batches, step):
    loss = real(run, batches, step)
    if step == 1 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)
    return loss
run_module.one_step = one_step
sys.argv = ["scedit", *sys.argv[1:]]
runpy.run_module("scedit_cli.cli", run_name="__main__")
"""


def test_a_signal_to_one_process_stops_every_process_after_the_same_step(tmp_path):
    """Without agreeing, the signalled process would checkpoint while the other one runs its next step, and
    both would wait for each other for ever."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    make_tiny_pipeline(tmp_path / "sd15", "sd15")
    data = make_dataset(tmp_path / "data", n=4)
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "sd15", data, {"name": "sc"}, tmp_path / "out",
                          train={"max_steps": 5, "batch_size": 2}, checkpoint={"every": 0, "keep_last": 5})
    script = tmp_path / "launched.py"
    script.write_text(ONE_RANK_SIGNALLED)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
              "no", "--dynamo_backend", "no"]
    p = subprocess.run([*launch, str(script), "train", str(recipe), "--json"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode != 0 and "continue with --resume latest" in p.stderr, p.stderr[-3000:]
    assert json.loads(p.stdout)["steps"] == 2  # rank 0 reports the step both stopped after
    # one checkpoint, at the step both stopped after (resuming it with two processes: the test above)
    assert [d.name for d in (tmp_path / "out" / "checkpoints").iterdir()] == ["step-00000002"]
    assert json.loads((tmp_path / "out" / "checkpoints" / "step-00000002" / "state.json").read_text())["step"] == 2


def test_data_order_does_not_depend_on_the_process_count(tmp_path):
    """What resuming with another process count relies on: each step's samples (stream positions)
    are the same whether one process or two (each its share) read them, from any start step."""
    from scedit_cli.data import load_training_data
    from scedit_cli.loader import training_loader
    from scedit_cli.recipes import load_recipe

    make_tiny_pipeline(tmp_path / "sd15", "sd15")
    data = make_dataset(tmp_path / "data", n=6)
    r = load_recipe(write_recipe(tmp_path / "r.toml", tmp_path / "sd15", data, {"name": "sc"}, tmp_path / "o",
                                 train={"max_steps": 6, "batch_size": 4, "gradient_accumulation_steps": 2}))
    ds = load_training_data(r.data, [], r.train.seed)

    def positions(rank, world, start):
        loader, _ = training_loader(ds, r.train, 0, rank, world, start)
        it, steps = iter(loader), []
        for _ in range(start, r.train.max_steps):
            steps.append(sorted(p for _ in range(r.train.gradient_accumulation_steps) for p in next(it)["positions"]))
        return steps

    one = positions(0, 1, 0)
    assert len({p for s in one for p in s}) > 4  # the order crosses epochs
    for start in (0, 3):
        two = [sorted(a + b) for a, b in zip(positions(0, 2, start), positions(1, 2, start))]
        assert two == one[start:]


def test_train_gives_the_callers_unet_back_unpatched(tmp_path, monkeypatch):
    """A library user's pipeline: after `train(base=pipe)` the U-Net's modules run their stock
    forwards again (no lean patches, no fused SiLU), gradient checkpointing is off as it was."""
    from diffusers import DiffusionPipeline
    from torch import nn

    from scedit_cli.lean.common import PATCHED
    from scedit_cli.lean.norms import SiLUUnlessFused
    from scedit_cli.prepack import _STATE

    make_tiny_pipeline(tmp_path / "sd15", "sd15")
    data = make_dataset(tmp_path / "data", n=2)
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "sd15", data, {"name": "sc"}, tmp_path / "o",
                          train={"max_steps": 1, "batch_size": 2, "lean": True, "gradient_checkpointing": True})
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "sd15"))
    unet = pipe.unet
    assert not unet.is_gradient_checkpointing
    seen = {}

    def spy(module, args, output):  # patched during training: the lean forwards were in place
        seen["patched"] = sum(PATCHED in m.__dict__ for m in unet.modules())
        seen["packed"] = sum(_STATE in m.__dict__ for m in unet.modules())

    handle = unet.register_forward_hook(spy)
    result = train(recipe, base=pipe)
    handle.remove()
    assert result.steps == 1 and seen["patched"] > 0 and seen["packed"] > 0
    assert not [n for n, m in unet.named_modules()
                if "forward" in m.__dict__ or PATCHED in m.__dict__ or _STATE in m.__dict__]
    assert not [n for n, m in unet.named_modules() if isinstance(m, SiLUUnlessFused)]
    assert any(type(m) is nn.SiLU for m in unet.modules())
    assert not unet.is_gradient_checkpointing

    # Also when training fails part-way: a step that raises still leaves the U-Net stock. (A fresh
    # pipeline: the trained SCEdit tuners stay attached to the first one, as the result of training.)
    bad = write_recipe(tmp_path / "bad.toml", tmp_path / "sd15", data, {"name": "sc"}, tmp_path / "o2",
                       train={"max_steps": 1, "batch_size": 2, "lean": True})
    unet = (pipe := DiffusionPipeline.from_pretrained(str(tmp_path / "sd15"))).unet
    from scedit_cli.training import run as run_module

    def failing(run, batches, step):
        assert sum(PATCHED in m.__dict__ for m in unet.modules()) > 0
        assert sum(_STATE in m.__dict__ for m in unet.modules()) > 0
        raise RuntimeError("a step failed")

    monkeypatch.setattr(run_module, "one_step", failing)
    with pytest.raises(RuntimeError, match="a step failed"):
        train(bad, base=pipe)
    assert not [n for n, m in unet.named_modules() if PATCHED in m.__dict__ or _STATE in m.__dict__]


@pytest.mark.parametrize("name", ["ddp-1node-8gpu", "ddp-2node-8gpu", "fsdp-full-shard", "deepspeed-zero2",
                                  "deepspeed-zero3"])
def test_example_launch_configs_load_with_accelerates_loader(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    cfg = load_config_from_file(str(RECIPES / f"{name}.yaml"))
    want = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP, "deepspeed": DistributedType.DEEPSPEED}
    assert cfg.distributed_type == want[name.split("-")[0]]
    assert cfg.num_processes == (16 if "2node" in name else 8)
    assert cfg.num_machines == (2 if "2node" in name else 1)
    assert cfg.mixed_precision == "no", "precision is the recipe's (train.mixed_precision)"
    if name.startswith("fsdp"):
        assert cfg.fsdp_config["fsdp_version"] == 2
        assert cfg.fsdp_config["fsdp_reshard_after_forward"] is True  # full shard
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if name.startswith("deepspeed"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])


def test_sharded_runs_save_whole_weights_in_our_formats(tmp_path):
    """What FSDP / DeepSpeed runs save with (those backends need GPUs; accelerate 1.15 runs FSDP
    only on GPUs): the gathered weights map to the method's own names, the method saves them
    whole while its modules hold them, its own (sharded) parameters come back after; a checkpoint
    with accelerate's sharded optimizer state reads without optimizer.safetensors and is refused,
    with what to do, by a run that is not sharded."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    from scedit_cli.methods import build_method
    from scedit_cli.models import load_base
    from scedit_cli.training.checkpoint import SHARDED, read_checkpoint, save_checkpoint
    from scedit_cli.training.distributed import TrainableModel, gathered_weights, whole_weights
    from scedit_cli.training.step import make_noise_scheduler

    make_tiny_pipeline(tmp_path / "sd15", "sd15")
    base = load_base(str(tmp_path / "sd15"))
    method = build_method("sc", {})
    method.setup(base)
    model = TrainableModel(method, make_noise_scheduler(base), "epsilon", None, None, whole_modules=True)
    assert [n for n, _ in model.named_parameters()] and all(n.startswith("parts.") for n, _ in model.named_parameters())
    acc = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1))
    weights = gathered_weights(acc, model)
    own = method.state_dict()
    assert weights.keys() == own.keys()
    params_before = [p for _, p in method.named_trainable_parameters()]
    changed = {k: v + 1.0 for k, v in weights.items()}
    with whole_weights(method, changed):
        inside = method.state_dict()
        assert all(torch.equal(inside[k], changed[k]) for k in changed)
        outputs = method.save(tmp_path / "out", base_source="x")
    assert [p for _, p in method.named_trainable_parameters()] == params_before  # same objects back
    saved = load_file(tmp_path / "out" / "tuner" / "tuner.safetensors")  # the SC tuner's names are ours
    assert outputs and saved.keys() == own.keys()
    assert all(torch.equal(saved[k], own[k] + 1.0) for k in own)

    staging = tmp_path / "staging"
    (staging / "model_0").mkdir(parents=True)
    opt = torch.optim.AdamW(method.trainable_parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = save_checkpoint(tmp_path / "run", 2, method, opt, sched, None, {"recipe": {}}, 3, sharded_state=staging)
    assert (path / SHARDED / "model_0").is_dir() and not (path / "optimizer.safetensors").exists()
    assert not staging.exists()
    ckpt = read_checkpoint(path)
    assert ckpt.sharded and ckpt.optimizer == {} and ckpt.weights.keys() == own.keys()


def test_a_sharded_checkpoint_is_refused_without_sharding(tmp_path):
    from scedit_cli.errors import SceditError

    make_tiny_pipeline(tmp_path / "sd15", "sd15")
    data = make_dataset(tmp_path / "data", n=2)
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "sd15", data, {"name": "sc"}, tmp_path / "o",
                          train={"max_steps": 2, "batch_size": 2}, checkpoint={"every": 1})
    train(recipe)
    ckpt = tmp_path / "o" / "checkpoints" / "step-00000001"
    (ckpt / "optimizer.safetensors").unlink()
    (ckpt / "accelerate").mkdir()
    with pytest.raises(SceditError, match="written with FSDP / DeepSpeed sharding.*--config_file"):
        train(recipe, resume=str(ckpt))


def test_what_ddp_gets_and_what_sharding_splits():
    """The plan of the prepared module: under DDP only the trainable parameters are registered (a
    LoRA's frozen U-Net weights are neither broadcast nor bucketed); under FSDP / DeepSpeed the
    trainable modules are registered whole (sharding replaces their parameters in place), and
    every trainable parameter has our name for the gathered save."""
    from tiny_models import make_tiny_unet

    from scedit_cli.methods import build_method
    from scedit_cli.models import BaseModel
    from scedit_cli.training.distributed import TrainableModel

    for name, cfg in (("lora", {"rank": 4}), ("full", {})):
        method = build_method(name, cfg)
        method.setup(BaseModel.from_unet(make_tiny_unet("sd15")))
        trainable = method.trainable_parameters()
        ddp = TrainableModel(method, None, "epsilon", None, None)
        assert [id(p) for p in ddp.parameters()] == [id(p) for p in trainable]
        sharded = TrainableModel(method, None, "epsilon", None, None, whole_modules=True)
        every = list(method.unet.parameters())
        assert [id(p) for p in sharded.parameters()] == [id(p) for p in every]
        assert sorted(sharded.method_names.values()) == sorted(n for n, _ in method.named_trainable_parameters())
        if name == "lora":
            assert len(trainable) < len(every)
