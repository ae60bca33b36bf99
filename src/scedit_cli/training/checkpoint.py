"""Training checkpoints: atomic, keep the last K, resume bit-exactly.

A checkpoint is a folder `OUTPUT/checkpoints/step-00000100/` holding
`trainable.safetensors` (the method's trainable weights), `optimizer.safetensors`
(the optimizer's tensors; its param groups in the metadata) and `state.json`
(step, LR-scheduler and grad-scaler state, the loss history, skip counts).
Nothing is pickled. The folder is written under a temporary name and renamed
into place, so a `kill -9` at any moment leaves either the whole checkpoint or
none. Data order, noise and timesteps are functions of (seed, step), so these
files are all that resuming needs.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import SceditError
from ..fsutil import atomic_dir

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


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
                    keep_last: int, ema=None) -> Path:
    root = checkpoint_root(output_dir)
    path = root / f"step-{step:08d}"
    weights = {k: v.detach().to("cpu").contiguous() for k, v in method.state_dict().items()}
    opt_tensors, groups = _optimizer_tensors(optimizer)
    with atomic_dir(path) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"), metadata={"method": method.name, "step": str(step)})
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"param_groups": json.dumps(groups)})
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


def find_checkpoint(output_dir, resume: str) -> Path:
    """`latest` -> the newest checkpoint under OUTPUT/checkpoints; otherwise a checkpoint folder path."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise SceditError(
                f"--resume latest: no checkpoint under {checkpoint_root(output_dir)}; start without --resume"
            )
        return found[-1][1]
    path = Path(resume).expanduser()
    if not (path / "state.json").is_file():
        raise SceditError(f"--resume {resume}: not a checkpoint folder (no state.json); pass 'latest' or "
                          f"a folder such as {checkpoint_root(output_dir)}/step-00001000")
    return path


def load_checkpoint(path: Path, method, optimizer, lr_scheduler, scaler, device, ema=None) -> dict:
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "trainable.safetensors"))
        opt = load_file(str(path / "optimizer.safetensors"))
        with safe_open(str(path / "optimizer.safetensors"), "pt") as f:
            groups = json.loads(f.metadata()["param_groups"])
    except (OSError, ValueError, KeyError) as e:
        raise SceditError(f"{path}: damaged checkpoint ({type(e).__name__}: {e}); resume from an older one") from None
    if state.get("method") != method.name:
        raise SceditError(f"{path}: checkpoint of method {state.get('method')!r}, the recipe trains {method.name!r}")
    method.load_state_dict(weights, source=str(path))
    per_param: dict[int, dict] = {}
    for key, t in opt.items():
        idx, _, name = key.partition(".")
        per_param.setdefault(int(idx), {})[name] = t.to(device)
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise SceditError(f"{path}: optimizer state does not fit this recipe ({e}); resume with the recipe that wrote it") from None
    sched = lr_scheduler.state_dict()
    sched.update(state.get("lr_scheduler", {}))
    lr_scheduler.load_state_dict(sched)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise SceditError(f"{path}: no ema.safetensors but train.ema_decay is set; resume with the recipe "
                              "that wrote it (train.ema_decay = 0)")
        ema.load_state_dict(load_file(str(path / "ema.safetensors")), str(path / "ema.safetensors"))
    return state
