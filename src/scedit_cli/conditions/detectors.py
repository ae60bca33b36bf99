"""Learned condition detectors: depth (MiDaS), hed (HED), pose (OpenPose), seg (ADE20K).

depth, hed and pose are controlnet-aux's own detector classes, loaded with their
own `from_pretrained` from a local folder, so the checkpoints are the ones
ControlNet's annotators use (HF repo `lllyasviel/Annotators`). controlnet-aux
has no ADE20K segmenter, so seg uses transformers' UperNet (ConvNeXt) ADE20K
model `openmmlab/upernet-convnext-small`, the one diffusers' ControlNet-seg
examples use, and colours its labels with the standard ADE20K palette.

Weights come from `--weights DIR` or the local HF cache (`local_files_only`);
nothing is downloaded. When a file is missing the error names it, the repo it
comes from and where to put it.

Every detector returns maps the size of its input image (the controlnet-aux
detectors work at a multiple of 64, so their maps are resized back).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from ..errors import SceditError
from ..images import to_rgb8

ANNOTATORS_REPO = "lllyasviel/Annotators"
SEG_REPO = "openmmlab/upernet-convnext-small"
DEFAULT_RESOLUTION = 512


@dataclass(frozen=True)
class WeightSpec:
    repo: str
    files: tuple[str, ...]  # files the loader reads, relative to the folder
    subfolder: str = ""  # inside --weights, e.g. "upernet-convnext-small" for seg


WEIGHTS: dict[str, WeightSpec] = {
    "hed": WeightSpec(ANNOTATORS_REPO, ("ControlNetHED.pth",)),
    "depth": WeightSpec(ANNOTATORS_REPO, ("dpt_hybrid-midas-501f0c75.pt",)),
    "pose": WeightSpec(ANNOTATORS_REPO, ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")),
    "seg": WeightSpec(SEG_REPO, ("config.json", "preprocessor_config.json"), subfolder="upernet-convnext-small"),
}


def _missing(name: str, spec: WeightSpec, missing: str, weights: Path | None) -> SceditError:
    where = f"{weights / spec.subfolder if spec.subfolder else weights}" if weights else "the HF cache"
    target = f"{spec.subfolder + '/' if spec.subfolder else ''}{missing}"
    return SceditError(
        f"'{name}' needs {missing} from https://huggingface.co/{spec.repo} and it is not in {where}; on a connected machine run "
        f"`hf download {spec.repo}{'' if spec.subfolder else ' ' + ' '.join(spec.files)}`"
        f" (then copy the HF cache here) or put the file(s) at WEIGHTS/{target} and pass --weights WEIGHTS"
    )


def resolve_weights(name: str, weights: str | Path | None) -> Path:
    """The local folder holding `name`'s weight files; SceditError naming the missing file otherwise."""
    spec = WEIGHTS[name]
    if weights is not None:
        weights = Path(weights).expanduser()
        if not weights.is_dir():
            raise SceditError(f"--weights {weights} is not a folder; give the folder that holds {', '.join(spec.files)}")
        folder = weights / spec.subfolder if spec.subfolder and (weights / spec.subfolder).is_dir() else weights
        for f in spec.files:
            if not (folder / f).is_file():
                raise _missing(name, spec, f, weights)
        if name == "seg" and not any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
            raise _missing(name, spec, "model.safetensors", weights)
        return folder
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    folder = None
    files = spec.files + (("model.safetensors",) if name == "seg" else ())
    for f in files:
        try:
            folder = Path(hf_hub_download(spec.repo, f, local_files_only=True)).parent
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            raise _missing(name, spec, f, None) from None
    assert folder is not None
    return folder


class Detector:
    """A loaded detector: `run(images) -> maps`, one map per image, each the input's size."""

    def __init__(self, name: str, fn: Callable[[list[Image.Image], int], list[Image.Image]]):
        self.name = name
        self._fn = fn

    def run(self, images: list[Image.Image], detect_resolution: int | None = None) -> list[Image.Image]:
        res = detect_resolution or DEFAULT_RESOLUTION
        if res < 64:
            raise SceditError(f"detect_resolution={res} is too small; use 64 or more (default {DEFAULT_RESOLUTION})")
        maps = self._fn([to_rgb8(im) for im in images], res)
        return [m.convert("RGB").resize(im.size, Image.BILINEAR) if m.size != im.size else m.convert("RGB") for m, im in zip(maps, images)]


def _controlnet_aux(name: str, folder: Path, device: str) -> Detector:
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # controlnet-aux warns about optional extras (mediapipe) on import
        if name == "hed":
            from controlnet_aux.hed import HEDdetector as cls
        elif name == "depth":
            from controlnet_aux.midas import MidasDetector as cls
        else:
            from controlnet_aux.open_pose import OpenposeDetector as cls
    try:
        det = cls.from_pretrained(str(folder)) if name == "pose" else cls.from_pretrained(str(folder), filename=WEIGHTS[name].files[0])
    except (RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as e:  # wrong/corrupt checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SceditError(f"cannot load '{name}' weights from {folder}: {first[:300]}; re-download {', '.join(WEIGHTS[name].files)} from {WEIGHTS[name].repo}") from None
    det = det.to(device)

    def fn(images: list[Image.Image], res: int) -> list[Image.Image]:
        # controlnet-aux detectors take one image per call: "batching" here is the
        # runner handing over a batch it decoded in parallel; the model runs per image.
        out = []
        for im in images:
            m = det(np.asarray(im), detect_resolution=res, image_resolution=res, output_type="pil")
            out.append(m if isinstance(m, Image.Image) else Image.fromarray(m))
        return out

    return Detector(name, fn)


def _seg(folder: Path, device: str) -> Detector:
    import torch
    from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

    from .palette import colorize_ade20k

    processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    model = UperNetForSemanticSegmentation.from_pretrained(str(folder), local_files_only=True).to(device).eval()

    def fn(images: list[Image.Image], res: int) -> list[Image.Image]:
        # One size for the whole batch: the processor resizes every image to res x res.
        batch = processor(images=images, size={"height": res, "width": res}, return_tensors="pt")
        with torch.no_grad():
            outputs = model(pixel_values=batch["pixel_values"].to(device))
        labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[(im.height, im.width) for im in images])
        return [Image.fromarray(colorize_ade20k(lab.cpu().numpy())) for lab in labels]

    return Detector("seg", fn)


_CACHE: dict[tuple[str, str, str], Detector] = {}


def get_detector(name: str, weights: str | Path | None = None, device: str | None = None) -> Detector:
    """Load (once per process) the detector for condition `name`."""
    if name not in WEIGHTS:
        raise SceditError(f"condition '{name}' has no learned detector; learned ones are: {', '.join(WEIGHTS)}")
    folder = resolve_weights(name, weights)
    from ..devices import resolve_device

    device = str(resolve_device(device))
    key = (name, str(folder.resolve()), device)
    if key not in _CACHE:
        _CACHE[key] = _seg(folder, device) if name == "seg" else _controlnet_aux(name, folder, device)
    return _CACHE[key]
