"""The inputs of a sampling run, loaded and checked before the images are made: the device, the base model,
the tuners (refused when built for another U-Net or VAE) and which control image feeds which CSC-Tuner
(what is checked before anything loads is in `preflight.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..console import warn
from ..devices import resolve_device
from ..errors import SceditError
from ..models import BaseModel, load_base, same_base
from ..precision import inference_dtype
from ..tuners import CSCTuner, SkipTuner, load_tuner
from ..tuners.hub import resolve_tuner_source
from .controls import ControlSpec, file_digest, known_condition_names
from .manifest import fingerprint


def load_model(model: str | BaseModel, device: str | None = "auto", dtype: str | None = None) -> BaseModel:
    if isinstance(model, BaseModel):
        return model
    from ..console import quiet_loaders

    quiet_loaders()
    dev = resolve_device(device)
    base = load_base(model, dtype=dtype or inference_dtype(dev))
    base.pipeline.to(dev)
    return base


def load_tuners(paths: Sequence[str | Path | SkipTuner], base: BaseModel) -> list[SkipTuner]:
    """Load tuners (folders, files, Hub ids, tuner objects) for `base`; refuses tuners built for another
    U-Net layout or VAE factor, warns when a tuner records another base model."""
    tuners = []
    dtype = base.unet.dtype
    for p in paths:
        # OPs in the base's precision (a tuner object passed in is copied, not rounded).
        if isinstance(p, SkipTuner):
            tuner = p.ops_in(dtype)
        else:
            p = resolve_tuner_source(p)
            tuner = load_tuner(p, unet=base.unet).ops_in(dtype, copy=False)
        recorded = (tuner.file_meta or {}).get("base_model")
        if not same_base(recorded, base.source):
            warn(f"{p}: tuner was trained on base model {recorded!r}, not {base.source!r}; "
                 "its edits may not fit this base")
        if isinstance(tuner, CSCTuner) and tuner.config.hint_downscale != base.vae_scale_factor:
            raise SceditError(
                f"{p}: CSC-Tuner's hint encoder downsamples by {tuner.config.hint_downscale} but this base "
                f"model's VAE downsamples by {base.vae_scale_factor}: use a tuner trained for this base model"
            )
        if not isinstance(p, SkipTuner):
            tuner.source_path = str(p)
        tuners.append(tuner)
    conds = [t.config.condition for t in tuners if isinstance(t, CSCTuner)]
    dup = sorted({c for c in conds if conds.count(c) > 1})
    if dup:
        raise SceditError(
            f"several CSC-Tuners are trained for the same condition {dup[0]!r}; "
            "pass one tuner per condition (so each --control finds its tuner)"
        )
    return tuners


def tuner_record(t: SkipTuner) -> dict:
    path = getattr(t, "source_path", None)
    rec = {"method": t.method, "path": path}
    if isinstance(t, CSCTuner):
        rec["condition"] = t.config.condition
    if path is not None:
        p = Path(path)
        w = p / "tuner.safetensors" if p.is_dir() else p
        rec["digest"] = file_digest(w) if w.is_file() else None
    else:
        rec["digest"] = "in-memory:" + fingerprint(
            {k: float(v.double().sum()) for k, v in t.state_dict().items()}
        )
    return rec


def bind_controls(tuners: list[SkipTuner], controls: Sequence[ControlSpec], allow_repeats: bool = False,
                  provided: set[int] = frozenset()) -> dict[int, list[int]]:
    """For each CSC-Tuner (by position), the indices of the controls that feed it; those in `provided` (every
    prompt has its own image) may have none."""
    csc = {i: t.config.condition for i, t in enumerate(tuners) if isinstance(t, CSCTuner)}
    loaded = sorted(set(csc.values()))
    binding: dict[int, list[int]] = {i: [] for i in csc}
    for k, spec in enumerate(controls):
        match = [i for i, c in csc.items() if c == spec.name]
        if not match and spec.name == "outpaint":  # an inpainting tuner outpaints too (paper Fig. 10)
            match = [i for i, c in csc.items() if c == "inpaint"]
        if not match:
            known = known_condition_names()
            if spec.name not in known and spec.name not in loaded:
                raise SceditError(
                    f"--control {spec.name}:...: unknown condition {spec.name!r}; known conditions: "
                    f"{', '.join(known)}"
                )
            raise SceditError(
                f"--control {spec.name}:{spec.path}: no loaded CSC-Tuner was trained for {spec.name!r} "
                f"(loaded: {', '.join(loaded) or 'none'}); add its tuner with --tuner"
            )
        binding[match[0]].append(k)
    for i, ks in binding.items():
        name = csc[i]
        if not ks and i not in provided:
            raise SceditError(
                f"CSC-Tuner {tuners[i].source_path or i} needs a {name!r} condition image: "
                f"pass --control {name}:IMAGE (or --control-map {name}:MAP), or give every prompt its own "
                f"(`control_map` in a .jsonl prompts file)"
            )
        if len(ks) > 1 and not allow_repeats:
            raise SceditError(
                f"{len(ks)} condition images given for {name!r}; `scedit sample` takes one per condition "
                "(use `scedit compose` for several maps of one condition)"
            )
    repeated = [i for i, ks in binding.items() if len(ks) > 1]
    if len(repeated) > 1:
        raise SceditError(
            "only one condition may be given several images (one image per variant, Fig. 9a); got several for "
            + ", ".join(repr(csc[i]) for i in repeated)
        )
    return binding
