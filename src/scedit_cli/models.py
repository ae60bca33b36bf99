"""Loading a Stable Diffusion base model: diffusers folder, single file, or hub id.

Everything goes through diffusers' own loaders. A hub id works offline when it
is in the HF cache (HF_HUB_OFFLINE=1 or no network); otherwise the error says
how to get it. SD 1.5, SD 2.1 (epsilon or v-prediction, read from the
scheduler config) and SDXL (two text encoders, added time conditions) are
recognised from the components, not from names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import SceditError
from .hubutil import check_model_source, first_line, hub_offline, hub_source_error

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise SceditError(f"unknown dtype {name!r}; choose one of fp32, fp16, bf16")
    return DTYPES[name]


def vae_scale_factor(vae_config) -> int:
    """Pixels per latent cell: one 2x downsampling per VAE block after the first."""
    return 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1)


@dataclass
class BaseModel:
    """The loaded pipeline plus the facts training and sampling need about it."""

    pipeline: Any
    source: str
    is_sdxl: bool
    prediction_type: str
    vae_scale_factor: int

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def text_encoders(self) -> list:
        encs = [self.pipeline.text_encoder]
        if getattr(self.pipeline, "text_encoder_2", None) is not None:
            encs.append(self.pipeline.text_encoder_2)
        return [e for e in encs if e is not None]

    @property
    def tokenizers(self) -> list:
        toks = [self.pipeline.tokenizer]
        if getattr(self.pipeline, "tokenizer_2", None) is not None:
            toks.append(self.pipeline.tokenizer_2)
        return [t for t in toks if t is not None]

    @property
    def scheduler(self):
        return self.pipeline.scheduler

    @classmethod
    def from_pipeline(cls, pipe, source: str | None) -> "BaseModel":
        """The facts about a loaded diffusers Stable Diffusion pipeline (any task: text-to-image, img2img, ...).
        `source`: where it was loaded from, if known (compared with the base a tuner records)."""
        if getattr(pipe, "unet", None) is None or getattr(pipe, "vae", None) is None:
            raise SceditError(
                f"{source or 'pipe'}: pipeline {type(pipe).__name__} has no U-Net/VAE; SCEdit needs a Stable "
                "Diffusion model"
            )
        is_sdxl = getattr(pipe, "text_encoder_2", None) is not None or \
            getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"
        prediction_type = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
        return cls(pipe, source or "", is_sdxl, prediction_type, vae_scale_factor(pipe.vae.config))

    @classmethod
    def from_unet(cls, unet, *, is_sdxl: bool | None = None, prediction_type: str = "epsilon",
                  vae_scale_factor: int = 8, source: str = "unet") -> "BaseModel":
        """A U-Net-only base (no VAE, no text encoders): for --dry-run on the meta device and
        for timing training steps on random latents and embeddings."""
        from types import SimpleNamespace

        if is_sdxl is None:
            is_sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        pipe = SimpleNamespace(unet=unet, vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                               tokenizer_2=None, scheduler=None)
        return cls(pipe, source, is_sdxl, prediction_type, vae_scale_factor)


def text_embeddings(base: BaseModel, captions: list[str], device):
    """(prompt embeds, SDXL's pooled text embeds or None) from the frozen text encoder(s), no grad."""
    with torch.no_grad():
        if base.is_sdxl:
            pe, _, pooled, _ = base.pipeline.encode_prompt(
                captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return pe, pooled
        pe, _ = base.pipeline.encode_prompt(captions, device, 1, False)
        return pe, None


def time_ids(original_sizes, crop_top_lefts, resolution, device, dtype):
    """SDXL's added time ids: original size, crop top-left, target size (an int for a square, or (h, w))."""
    target = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    rows = [[*o, *c, *target] for o, c in zip(original_sizes, crop_top_lefts)]
    return torch.tensor(rows, device=device, dtype=dtype)


def _is_single_file(path: Path) -> bool:
    return path.suffix in (".safetensors", ".ckpt") and path.is_file()


def _single_file_is_sdxl(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return any(k.startswith("conditioner.embedders.1") for k in f.keys())


def _no_safety_checker(source: str, offline: bool) -> dict:
    """`safety_checker=None` for pipelines that have one (SD 1.x/2.x); SDXL pipelines take no such argument."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(source, local_files_only=offline)
    except Exception:  # not resolvable here: from_pretrained reports it properly
        return {}
    return {"safety_checker": None} if "safety_checker" in index else {}


def load_pipeline(source: str, dtype: str | torch.dtype | None = None, config: str | None = None):
    """A diffusers pipeline from a folder, a single `.safetensors` checkpoint, or a hub id."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    check_model_source(source)
    torch_dtype = parse_dtype(dtype)
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    path = Path(source).expanduser()
    offline = hub_offline()
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise SceditError(
                    f"{path}: not a diffusers pipeline folder (no model_index.json); pass a folder saved with "
                    "save_pretrained, a .safetensors checkpoint, or a hub id"
                )
            return DiffusionPipeline.from_pretrained(str(path), **_no_safety_checker(str(path), offline), **kwargs)
        if _is_single_file(path):
            if path.suffix == ".ckpt":
                raise SceditError(f"{path}: .ckpt (pickle) checkpoints are not loaded; convert it to .safetensors")
            cls = StableDiffusionXLPipeline if _single_file_is_sdxl(path) else StableDiffusionPipeline
            if config is not None:
                kwargs["config"] = config
            try:
                return cls.from_single_file(str(path), local_files_only=offline, **kwargs)
            except (SceditError, KeyboardInterrupt):
                raise
            except Exception as e:  # diffusers' SingleFileComponentError, KeyError on odd keys, ...
                raise SceditError(
                    f"cannot load base model {source!r} as a single-file checkpoint ({first_line(e)}); it must be a "
                    "complete original-format Stable Diffusion checkpoint; offline, also set model.single_file_config "
                    "to a diffusers folder (or cached hub id) of the same architecture"
                ) from None
        return DiffusionPipeline.from_pretrained(source, local_files_only=offline,
                                                 **_no_safety_checker(source, offline), **kwargs)
    except SceditError:
        raise
    except (OSError, ValueError, EnvironmentError) as e:
        if not path.exists():
            raise hub_source_error("base model", source, e, "a local diffusers folder") from None
        raise SceditError(
            f"cannot load base model {source!r} ({first_line(e)}); check that the file/folder is a complete "
            "Stable Diffusion checkpoint"
        ) from None


def same_base(recorded: str | None, used: str | None) -> bool:
    """Whether a tuner's recorded `base_model` is the base in use, as far as the names tell.

    Unknown names and architecture names (`scedit convert --arch sd15`) count as the same; two local
    paths are compared as resolved paths, anything else as text."""
    from .recipes import ARCHES

    if not recorded or not used or recorded in ARCHES:
        return True
    a, b = Path(recorded).expanduser(), Path(used).expanduser()
    if a.exists() and b.exists():
        return a.resolve() == b.resolve()
    return recorded.rstrip("/") == used.rstrip("/")


def load_base(source: str, dtype: str | torch.dtype | None = None, config: str | None = None) -> BaseModel:
    return BaseModel.from_pipeline(load_pipeline(source, dtype=dtype, config=config), source)
