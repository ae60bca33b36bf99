"""Training checkpoints: atomic, keep the last K, resume bit-exactly.

A checkpoint is a folder `OUTPUT/checkpoints/step-00000100/` holding
`trainable.safetensors` (the method's trainable weights), `optimizer.safetensors`
(the optimizer's tensors; its param groups in the metadata) and `state.json`
(step, LR-scheduler and grad-scaler state, the loss history, skip counts).
Nothing of ours is pickled. Under FSDP / DeepSpeed the optimizer state stays
sharded: `accelerate/` (accelerate's `save_state`, each process its shard, in
accelerate's own torch files) replaces `optimizer.safetensors`, and
`trainable.safetensors` holds the gathered whole weights. The folder is written under a temporary name and renamed
into place, so a `kill -9` at any moment leaves either the whole checkpoint or
none. Data order, noise and timesteps are functions of (seed, step), so these
files are all that resuming needs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import SceditError
from ..fsutil import atomic_dir
from .checkpoint_files import checkpoint_root, find_checkpoint, list_checkpoints

SHARDED = "accelerate"  # a sharded run's optimizer (and model) state, in accelerate's save_state layout


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"optimizer state {k} is not a tensor")
            tensors[f"{idx}.{k}"] = v.detach().to("cpu").contiguous()
    return tensors, sd["param_groups"]


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


def save_checkpoint(output_dir, step: int, method, optimizer, lr_scheduler, scaler, state: dict,
                    keep_last: int, ema=None, sharded_state: Path | None = None) -> Path:
    """`sharded_state`: a folder accelerate's `save_state` wrote (FSDP / DeepSpeed), moved into the
    checkpoint as `accelerate/` in place of `optimizer.safetensors`."""
    root = checkpoint_root(output_dir)
    path = root / f"step-{step:08d}"
    weights = {k: v.detach().to("cpu").contiguous() for k, v in method.state_dict().items()}
    with atomic_dir(path) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"), metadata={"method": method.name, "step": str(step)})
        if sharded_state is None:
            opt_tensors, groups = _optimizer_tensors(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"param_groups": json.dumps(groups)})
        else:
            shutil.move(str(sharded_state), str(tmp / SHARDED))
        if ema is not None:
            save_file(ema.state_dict(), str(tmp / "ema.safetensors"), metadata={"decay": str(ema.decay)})
        full = {
            "step": step,
            "method": method.name,
            "lr_scheduler": _jsonable(lr_scheduler.state_dict()),
            "scaler": scaler.state_dict() if scaler is not None else None,
            **state,
        }
        (tmp / "state.json").write_text(json.dumps(full) + "\n")
    for _, old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


class DamagedCheckpoint(SceditError):
    """A checkpoint file that cannot be read (truncated, overwritten, edited)."""


@dataclass
class CheckpointData:
    """Everything a checkpoint holds, read and checked before any of it is applied."""

    path: Path
    state: dict
    weights: dict
    optimizer: dict
    param_groups: list
    ema: dict | None
    sharded: bool = False  # optimizer state in SHARDED/ (FSDP / DeepSpeed), loaded by accelerate

    @property
    def recipe(self) -> dict:
        return self.state["recipe"]


def _read(file: Path, reader):
    try:
        return reader(file)
    except Exception as e:  # json, OSError, safetensors' own SafetensorError, a missing key
        detail = (str(e).strip().splitlines() or [""])[0][:160]
        raise DamagedCheckpoint(f"{file}: damaged, cannot be read ({type(e).__name__}: {detail})") from None


def read_checkpoint(path: Path) -> CheckpointData:
    """Read every file of the checkpoint folder `path`; a `DamagedCheckpoint` names the bad file."""
    state = _read(path / "state.json", lambda f: json.loads(f.read_text()))
    for key in ("step", "method", "recipe"):
        if key not in state:
            raise DamagedCheckpoint(f"{path / 'state.json'}: damaged, no {key!r}")
    weights = _read(path / "trainable.safetensors", lambda f: load_file(str(f)))
    opt_file = path / "optimizer.safetensors"
    sharded = (path / SHARDED).is_dir() and not opt_file.exists()
    opt, groups = {}, []
    if not sharded:
        opt = _read(opt_file, lambda f: load_file(str(f)))

        def groups_of(f):
            with safe_open(str(f), "pt") as g:
                return json.loads(g.metadata()["param_groups"])

        groups = _read(opt_file, groups_of)
    ema_file = path / "ema.safetensors"
    ema = _read(ema_file, lambda f: load_file(str(f))) if ema_file.exists() else None
    return CheckpointData(path, state, weights, opt, groups, ema, sharded)


def read_for_resume(output_dir, resume: str, main: bool = True) -> CheckpointData:
    """The checkpoint `--resume` names, read. With 'latest', a damaged newest checkpoint is moved
    aside by the main process (renamed `step-N.damaged`, kept for inspection; said on the console)
    and the one before it is used; a folder named explicitly must be readable."""
    from ..console import info

    path = find_checkpoint(output_dir, resume)
    while True:
        try:
            return read_checkpoint(path)
        except DamagedCheckpoint as e:
            older = [p for _, p in list_checkpoints(output_dir) if p != path] if resume == "latest" else []
            if not older:
                raise SceditError(f"{e}; resume from an older checkpoint (--resume FOLDER) or start afresh "
                                  "with --overwrite") from None
            if main:
                aside = path.with_name(path.name + ".damaged")
                shutil.rmtree(aside, ignore_errors=True)
                path.rename(aside)
                info(f"{e}; moved it aside to {aside.name}, resuming from {older[-1]}")
            path = older[-1]


def apply_checkpoint(ckpt: CheckpointData, method, optimizer, lr_scheduler, scaler, device, ema=None) -> dict:
    """Load a read checkpoint into the method, optimizer, schedule, scaler and EMA; returns its state.
    A sharded checkpoint's optimizer state is not loaded here: accelerate's `load_state` does it once
    the optimizer is prepared."""
    path, state = ckpt.path, ckpt.state
    if state.get("method") != method.name:
        raise SceditError(f"{path}: checkpoint of method {state.get('method')!r}, the recipe trains {method.name!r}")
    method.load_state_dict(ckpt.weights, source=str(path))
    if ckpt.sharded:
        return _load_rest(ckpt, lr_scheduler, scaler, ema)
    per_param: dict[int, dict] = {}
    for key, t in ckpt.optimizer.items():
        idx, _, name = key.partition(".")
        per_param.setdefault(int(idx), {})[name] = t.to(device)
    groups = ckpt.param_groups
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise SceditError(f"{path}: optimizer state does not fit this recipe ({e}); resume with the recipe that wrote it") from None
    return _load_rest(ckpt, lr_scheduler, scaler, ema)


def _load_rest(ckpt: CheckpointData, lr_scheduler, scaler, ema) -> dict:
    path, state = ckpt.path, ckpt.state
    sched = lr_scheduler.state_dict()
    sched.update(state.get("lr_scheduler", {}))
    lr_scheduler.load_state_dict(sched)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if ckpt.ema is None:
            raise SceditError(f"{path}: no ema.safetensors but train.ema_decay is set; resume with the recipe "
                              "that wrote it (train.ema_decay = 0)")
        ema.load_state_dict(ckpt.ema, str(path / "ema.safetensors"))
    return state
