"""One line in a diffusers script: `handle = scedit_cli.apply_tuners(pipe, tuners, ...)`.

Works on any diffusers Stable Diffusion 1.5 / 2.x / SDXL pipeline (text-to-image,
image-to-image, inpainting, ...): the tuners are hooked onto `pipe.unet` with
`tuners.attach`, exactly as `scedit sample` does, so the same tuner, seed and
scheduler give the same image.

Condition images of CSC-Tuners are turned into hint features lazily, at the
first U-Net call of each generated size (a forward pre-hook on the U-Net reads
the latent size and multiplies it by the VAE factor), with the `scedit sample`
code: a raw photo is brought to that size and its map computed as
`--control NAME:IMAGE` does, a ready map is resized as `--control-map` does.
The features are cached per (tuner, size, device) and reused by every step and
both halves of classifier-free guidance.

Weights (the editor's alpha, paper Eq. 7): SC-Tuners take their weight as
given (default 1); the CSC-Tuners' weights are normalised to sum to 1, as in
`scedit compose`, then multiplied by `control_scale`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import SceditError
from .models import BaseModel
from .sampling.controls import control_map, map_to_tensor, open_image
from .sampling.generate import normalise_weights
from .sampling.inputs import load_tuners
from .tuners import CSCTuner, SkipTuner, attach, detach, get_editor

TunerSource = str | Path | SkipTuner


class TunerHandle:
    """What `apply_tuners` returns: change weights and condition images between calls, or `remove()`."""

    def __init__(self, pipe, tuners: list[SkipTuner], vae_factor: int, control_scale: float,
                 annotator_weights: str | Path | None):
        self.pipe = pipe
        self.unet = pipe.unet
        self.tuners = tuners
        self.vae_factor = vae_factor
        self.control_scale = float(control_scale)
        self.annotator_weights = annotator_weights
        self.weights: list[float] = []
        self.editor = None
        self._sources: dict[int, tuple[Any, bool]] = {}  # CSC tuner index -> (image, is_map)
        self._hints: dict[tuple, dict[int, torch.Tensor]] = {}  # (tuner index, (H, W), device) -> features
        self._hook = None

    # --- public --------------------------------------------------------------------------------

    def set_weights(self, weights: Sequence[float] | None = None, control_scale: float | None = None) -> None:
        """One weight per tuner (None: all 1). CSC weights are normalised to sum to 1 (Eq. 7) and multiplied
        by `control_scale` (default: the one given before); SC weights are used as they are."""
        if control_scale is not None:
            self.control_scale = float(control_scale)
        given = [1.0] * len(self.tuners) if weights is None else [float(w) for w in weights]
        if len(given) != len(self.tuners):
            raise SceditError(f"weights: {len(given)} value(s) given for {len(self.tuners)} tuner(s); give one each")
        csc = [i for i, t in enumerate(self.tuners) if isinstance(t, CSCTuner)]
        if csc:
            alphas = normalise_weights([given[i] for i in csc], [self.tuners[i].config.condition for i in csc])
            for i, a in zip(csc, alphas):
                given[i] = a * self.control_scale
        self.weights = given
        if self.editor is not None:
            self.editor.set_weights(given)

    def set_condition(self, name: str, image, is_map: bool = False) -> None:
        """The condition image of the CSC-Tuner trained for `name`: a raw photo (PIL image, path or HxWxC
        array; its map is computed as `scedit sample --control` does), a ready map with `is_map=True`
        (as `--control-map`), or a torch tensor (C, H, W) / (B, C, H, W) in [0, 1] at the generated size."""
        index = self._csc_index(name)
        self._sources[index] = (_as_input(image, name), bool(is_map))
        self._hints = {k: v for k, v in self._hints.items() if k[0] != index}

    def remove(self) -> None:
        """Detach the tuners: the pipeline computes exactly what it did before `apply_tuners`."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.editor is not None and get_editor(self.unet) is self.editor:
            detach(self.unet)
        self.editor = None
        for t in self.tuners:
            if isinstance(t, CSCTuner):
                t.set_hints(None)
        self._hints = {}

    def __enter__(self) -> "TunerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = [t.method + (f":{t.config.condition}" if isinstance(t, CSCTuner) else "") for t in self.tuners]
        state = "attached" if self.editor is not None else "removed"
        return f"TunerHandle({', '.join(names)}; weights {self.weights}; {state})"

    # --- internals -----------------------------------------------------------------------------

    def _attach(self) -> None:
        self.editor = attach(self.unet, self.tuners, self.weights)
        self._hook = self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)

    def _csc_index(self, name: str) -> int:
        for i, t in enumerate(self.tuners):
            if isinstance(t, CSCTuner) and t.config.condition == name:
                return i
        loaded = [t.config.condition for t in self.tuners if isinstance(t, CSCTuner)]
        raise SceditError(
            f"condition {name!r}: no CSC-Tuner trained for it was applied (CSC-Tuners: {', '.join(loaded) or 'none'}); "
            "add its tuner to apply_tuners"
        )

    def _before_unet(self, module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        if sample is None:
            raise SceditError("the U-Net was called without `sample`: this pipeline is not supported by apply_tuners")
        device = sample.device
        param = next(self.editor.parameters(), None)
        if param is not None and param.device != device:  # the pipeline moved (pipe.to, CPU offload)
            self.editor.to(device)
        size = (sample.shape[-2] * self.vae_factor, sample.shape[-1] * self.vae_factor)
        for i, t in enumerate(self.tuners):
            if isinstance(t, CSCTuner):
                t.set_hints(self._features(i, t, size, device) if self.weights[i] != 0 else None)
        return None

    def _features(self, index: int, tuner: CSCTuner, size: tuple[int, int], device) -> dict[int, torch.Tensor]:
        key = (index, size, str(device))
        if key not in self._hints:
            name = tuner.config.condition
            if index not in self._sources:
                raise SceditError(
                    f"the CSC-Tuner for {name!r} has no condition image: pass conditions={{{name!r}: image}} to "
                    f"apply_tuners or call handle.set_condition({name!r}, image)"
                )
            image, is_map = self._sources[index]
            height, width = size
            if isinstance(image, torch.Tensor):
                cond = image if image.ndim == 4 else image[None]
                if tuple(cond.shape[-2:]) != (height, width):
                    raise SceditError(
                        f"condition {name!r}: tensor of size {tuple(cond.shape[-2:])} but the image being generated "
                        f"is {height}x{width}; pass a PIL image (resized for you) or a tensor of that size"
                    )
            else:
                cmap = control_map(name, image, width, height, is_map, self.annotator_weights)
                cond = map_to_tensor(cmap, tuner.config.in_channels)
            with torch.no_grad():
                self._hints[key] = tuner.encode_condition(cond.to(device=device, dtype=torch.float32))
        return self._hints[key]


def _as_input(image, name: str):
    """A PIL image or a tensor from what a user may pass as a condition image."""
    if isinstance(image, torch.Tensor):
        if image.ndim not in (3, 4):
            raise SceditError(f"condition {name!r}: a tensor must be (C, H, W) or (B, C, H, W), got {tuple(image.shape)}")
        return image.detach().float()
    if isinstance(image, (str, Path)):
        return open_image(Path(image).expanduser(), f"{name} condition image")
    if isinstance(image, np.ndarray):
        arr = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        return Image.fromarray(arr)
    if isinstance(image, Image.Image):
        return image
    raise SceditError(
        f"condition {name!r}: got a {type(image).__name__}; pass a PIL image, a file path, an HxWxC array or a tensor"
    )


def apply_tuners(
    pipe,
    tuners: TunerSource | Sequence[TunerSource],
    weights: Sequence[float] | None = None,
    conditions: Mapping[str, Any] | None = None,
    *,
    maps: Mapping[str, Any] | None = None,
    control_scale: float = 1.0,
    annotator_weights: str | Path | None = None,
) -> TunerHandle:
    """Attach SCEdit tuners to a diffusers Stable Diffusion pipeline; returns a `TunerHandle`.

    tuners: tuner folders, `.safetensors` files, Hub ids (`user/repo[/sub/folder][@revision]`) or
    SkipTuner objects. weights: one per tuner (see the module docstring). conditions: condition name ->
    raw photo (the map is computed from it); maps: condition name -> ready-made map. `handle.remove()`
    restores the pipeline exactly.
    """
    items = [tuners] if isinstance(tuners, (str, Path, SkipTuner)) else list(tuners)
    if not items:
        raise SceditError("apply_tuners: no tuners given")
    base = BaseModel.from_pipeline(pipe, getattr(pipe, "name_or_path", None))
    if get_editor(base.unet) is not None:
        raise SceditError("this pipeline's U-Net already has SCEdit tuners: call remove() on the earlier handle first")
    handle = TunerHandle(pipe, load_tuners(items, base), base.vae_scale_factor, control_scale, annotator_weights)
    handle.set_weights(weights)
    for source, is_map in ((conditions, False), (maps, True)):
        for name, image in (source or {}).items():
            handle.set_condition(name, image, is_map=is_map)
    handle._attach()
    return handle
