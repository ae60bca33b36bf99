"""The inputs of a sampling run, loaded and checked before the images are made: the device, the base model,
the tuners (refused when built for another U-Net or VAE); which control image feeds which CSC-Tuner is
`binding.py`'s, and what is checked before anything loads is in `preflight.py`."""

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
from .binding import check_one_tuner_per_condition
from .controls import file_digest
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
    check_one_tuner_per_condition(tuners)
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
