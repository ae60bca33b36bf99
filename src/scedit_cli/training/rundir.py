"""A training run's output folder: a new run never mixes with an old one, a resumed run is the same run.

- A fresh run (no `--resume`) refuses a folder that holds another run's checkpoints or trained
  weights, unless `--overwrite`; then the old run's checkpoints, sample grids, EMA weights, loss
  curve and TensorBoard logs are removed before the first write (trained weights of the same
  name are replaced when the new run saves its own).
- `--resume` refuses a recipe that differs from the checkpoint's in anything that changes what
  is trained (`RESUMABLE` lists what may change), naming each key with its old and new value.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

from ..errors import SceditError
from ..fsutil import remove_paths
from ..recipes import SECTIONS
from .checkpoint_files import CHECKPOINTS, find_checkpoint, list_checkpoints

# What the loop itself writes into the output folder (the method writes its weights beside them).
RUN_FILES = (CHECKPOINTS, "samples", "ema", "loss.png", "tensorboard")

# Recipe keys that may change when resuming (a section name covers all its keys):
# - train.max_steps: to train further (the point of resuming);
# - [logging], [validation], [checkpoint]: what is reported and saved, not what is trained;
# - train.output_dir: a checkpoint may be resumed into another folder (--resume FOLDER);
# - data.num_workers: a sample depends only on (seed, stream position), not on the worker count;
# - data.cache, data.cache_dir: cached latents are drawn from the same seeds as uncached ones
#   (data.cache = 'auto' already switches on whether a cache exists, without a recipe change);
# - train.gradient_checkpointing, train.recompute_feed_forward: recompute activations in
#   backward to save memory, same gradients (e.g. to continue on a smaller GPU);
# - description: text only.
RESUMABLE = ("train.max_steps", "logging", "validation", "checkpoint", "train.output_dir", "data.num_workers",
             "data.cache", "data.cache_dir", "train.gradient_checkpointing", "train.recompute_feed_forward",
             "description")


def _trained_weights(out: Path) -> list[Path]:
    """Folders directly in `out` that hold safetensors weights (a tuner, a LoRA, a U-Net, ...)."""
    if not out.is_dir():
        return []
    return sorted(d for d in out.iterdir() if d.is_dir() and d.name not in RUN_FILES
                  and any(d.glob("*.safetensors")))


def check_fresh_run(out: Path, overwrite: bool) -> None:
    """Refuse to start a new run in a folder holding another run's results unless `overwrite`."""
    if overwrite:
        return
    found = list_checkpoints(out)
    weights = _trained_weights(out)
    if not found and not weights:
        return
    what = (f"another run's checkpoints (up to step {found[-1][0]})" if found
            else f"trained weights ({', '.join(d.name for d in weights)})")
    raise SceditError(
        f"train.output_dir {out}: holds {what}; continue that run with --resume latest, train into another "
        "train.output_dir, or pass --overwrite to start afresh (removes its checkpoints)"
    )


def check_resume_before_loading(out: Path, resume: str, recipe) -> None:
    """What `--resume` can be refused for from the named checkpoint's `state.json` alone: no checkpoint, or a
    recipe that differs in what is trained. The loop checks again on the checkpoint it reads; a state.json
    that cannot be read is left to it (it names the file and, with 'latest', resumes the one before)."""
    path = find_checkpoint(out, resume)
    try:
        old = json.loads((path / "state.json").read_text())["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(old, dict):
        check_resume_recipe(path, old, recipe.to_dict(), recipe_defaults(recipe))


def clear_previous_run(out: Path) -> None:
    """Remove what the loop wrote in an earlier run (`--overwrite`), before this run writes anything."""
    remove_paths(out, RUN_FILES)


def _flat(recipe: dict) -> dict:
    flat = {}
    for sec, vals in recipe.items():
        if isinstance(vals, dict):
            flat.update({f"{sec}.{k}": v for k, v in vals.items()})
        else:
            flat[sec] = vals
    return flat


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def recipe_defaults(recipe) -> dict:
    """The default of every recipe key that has one (`section.key` -> value, as stored in checkpoints)."""
    out = {}
    for section in (*SECTIONS, "method"):
        for f in fields(getattr(recipe, section)):
            if f.default is not MISSING:
                out[f"{section}.{f.name}"] = f.default
            elif f.default_factory is not MISSING:
                out[f"{section}.{f.name}"] = f.default_factory()
    return json.loads(json.dumps(out, default=str))


def check_resume_recipe(ckpt: Path, old: dict, new: dict, defaults: dict | None = None) -> None:
    """Refuse to resume the checkpoint `ckpt` (written with recipe `old`) under recipe `new` when they
    differ in anything that changes what is trained. A key the checkpoint's recipe lacks (added by a
    later scedit version) counts as its default from `defaults`, so upgrading scedit keeps runs resumable."""
    a, b = _flat(old), _flat(json.loads(json.dumps(new)))  # as stored: tuples are lists
    missing = "(absent)"
    a = {**{k: v for k, v in (defaults or {}).items() if k in b and k not in a}, **a}
    diff = [f"{k} {json.dumps(a.get(k, missing))} -> {json.dumps(b.get(k, missing))}"
            for k in sorted(set(a) | set(b)) if not _resumable(k) and a.get(k, missing) != b.get(k, missing)]
    if diff:
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise SceditError(
            f"{ckpt}: the recipe differs from the one this checkpoint was trained with: {', '.join(diff[:4])}{more}; "
            "resume with the same settings (train.max_steps, [logging], [validation] and [checkpoint] may change) "
            "or start a new run in another train.output_dir"
        )
