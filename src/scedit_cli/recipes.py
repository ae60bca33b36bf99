"""Training recipes: TOML files parsed into typed, strictly validated configs.

    [model]       base model (diffusers folder, single .safetensors, or hub id)
    [data]        dataset (folder with metadata.jsonl, parquet, jsonl, or hub name) and preprocessing
    [method]      name = "sc" | "csc" | "full" | "lora" | "controlnet" | "t2i-adapter" | "controlnet-xs"
                  | "controllora", plus that method's settings
    [train]       optimisation (Table 4 defaults: AdamW, wd 0.01, lr 5e-5 constant)
    [checkpoint]  every N steps, keep the last K
    [logging]     scalars every N steps, TensorBoard, loss curve
    [validation]  sample grid every M steps

Every unknown key, wrong type or bad value is a `SceditError` naming the recipe
file, the dotted key and the fix. `--set a.b=value` overrides any key (the value
is parsed as TOML, falling back to a bare string). Relative paths in the file
resolve against the recipe's folder; relative paths given with `--set`, against
the current directory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import SceditError, SettingError
from .recipe_parse import RecipeContext, apply_overrides, build_section, resolve_path, resolve_source, suggest
from .shards import resolve_shard_source

ARCHES = ("sd15", "sd21", "sd21-base", "sdxl")
PRECISIONS = ("no", "fp16", "bf16")
FROZEN_DTYPES = ("auto", "fp32", "fp16", "bf16")
PREDICTION_TYPES = ("", "epsilon", "v_prediction", "sample")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass
class ModelSection:
    """source: a diffusers folder, a single .safetensors file, or a hub id (offline: from the HF cache).
    arch: sd15 | sd21 | sd21-base | sdxl; lets --dry-run build the U-Net on the meta device when the
    weights are not on this machine, and is checked against the loaded model.
    frozen_dtype: dtype of the frozen weights; auto = the mixed-precision dtype on a GPU, fp32 on a CPU.
    prediction_type: override the scheduler config's (empty: take it from the scheduler)."""

    source: str = ""
    arch: str = ""
    single_file_config: str = ""
    frozen_dtype: str = "auto"
    prediction_type: str = ""


@dataclass
class DataSection:
    """source: folder with metadata.jsonl (or *.parquet / *.jsonl), a .parquet/.jsonl file, or a hub dataset.
    condition_columns: condition name -> column (default: the column named like the condition).
    compute_conditions: compute condition maps on the fly (scedit prepare's code) instead of reading them.
    cache: off | auto (use the latent/text cache when it is complete for this data and base model) |
    build (encode what is missing first); cache_dir: default scedit-cache/ next to the dataset.
    buckets: aspect-ratio bucketing (crops of about resolution² pixels near each image's shape);
    bucket_step: side multiple; bucket_max_ratio: the most elongated bucket.
    shuffle_window: with webdataset shards (source: a .tar, a comma list, {000..009} ranges, a glob or
    a folder of them, local or fsspec URL), each epoch takes the shards in a seeded order and shuffles
    rows within windows of this many (larger: better mixing; smaller: fewer shards read at once).
    streaming: read a file/folder/hub source as a `datasets` stream (no full download or index first),
    each epoch shuffled in a seeded buffer of shuffle_window rows; not with buckets or cache = 'build'."""

    source: str = ""
    split: str = "train"
    image_column: str = "image"
    text_column: str = "text"
    condition_columns: dict[str, str] = field(default_factory=dict)
    compute_conditions: bool = False
    detector_weights: str = ""
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = False
    caption_dropout: float = 0.0
    caption_prefix: str = ""
    max_samples: int = 0
    num_workers: int = 0
    cache: str = "auto"
    cache_dir: str = ""
    buckets: bool = False
    bucket_step: int = 64
    bucket_max_ratio: float = 2.0
    shuffle_window: int = 1000
    streaming: bool = False


@dataclass
class TrainSection:
    """batch_size is the total batch of one optimizer step (all processes x accumulation), as in Table 4.
    Loss options (all off by default; the paper uses none): snr_gamma (Min-SNR-gamma weighting),
    noise_offset, input_perturbation; ema_decay: keep an EMA of the trainable weights (saved beside them).
    Memory: gradient_checkpointing recomputes whole resnets and transformers in backward (diffusers);
    recompute_feed_forward only the transformer feed-forwards (`lean/`: less memory, a few % time).
    lean: the exact activation savings of `lean/` (same values and gradients): true, false, or "auto"
    (`lean.resolve_lean`: on; false rules them out). prepack: on a CPU, frozen convolutions whose weights
    dwarf their outputs run on weights reordered for oneDNN once (`prepack.py`: faster, one more copy of
    those weights): true, false or "auto" (on where PyTorch has oneDNN)."""

    output_dir: str = ""
    max_steps: int = 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    recompute_feed_forward: bool = False
    lean: bool | str = "auto"
    prepack: bool | str = "auto"
    seed: int = 0
    snr_gamma: float = 0.0
    noise_offset: float = 0.0
    input_perturbation: float = 0.0
    ema_decay: float = 0.0


@dataclass
class CheckpointSection:
    every: int = 1000
    keep_last: int = 3


@dataclass
class LoggingSection:
    every: int = 10
    tensorboard: bool = True
    loss_curve: bool = True


@dataclass
class ValidationSection:
    """every: steps between sample grids (0 = off). prompts: default the first dataset captions."""

    every: int = 0
    prompts: list[str] = field(default_factory=list)
    num_images: int = 4
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "train": TrainSection,
    "checkpoint": CheckpointSection,
    "logging": LoggingSection,
    "validation": ValidationSection,
}
REQUIRED = {("model", "source"), ("data", "source"), ("train", "output_dir"), ("method", "name")}
TOP_LEVEL = {"description"}


@dataclass
class Recipe:
    path: Path | None
    model: ModelSection
    data: DataSection
    method_name: str
    method: Any  # the method's Config dataclass
    train: TrainSection
    checkpoint: CheckpointSection
    logging: LoggingSection
    validation: ValidationSection
    description: str = ""
    raw: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem if self.path else "recipe"

    def check_sources(self) -> None:
        """Refuse a local data.source or model.source that is not there, reading nothing and without
        torch: commands that load both call it before their heavy imports."""
        from .datasource import check_data_source
        from .hubutil import check_model_source

        check_data_source(self.data.source)
        check_model_source(self.model.source)

    def to_dict(self) -> dict:
        out = {"description": self.description} if self.description else {}
        for sec in SECTIONS:
            out[sec] = _asdict(getattr(self, sec))
        out["method"] = {"name": self.method_name, **_asdict(self.method)}
        return out


def _asdict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def load_recipe(source: str | Path | dict, overrides: list[str] | dict | None = None) -> Recipe:
    """Parse and validate a recipe file (or a dict with the same layout) with `--set` overrides."""
    if isinstance(source, dict):
        path, raw, base_dir = None, _deepcopy(source), Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise SceditError(f"{path}: recipe file not found; pass a .toml recipe (see recipes/ for examples)")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise SceditError(f"{path}: not valid TOML ({e}); fix the syntax at that line") from None
        except UnicodeDecodeError:
            raise SceditError(f"{path}: not a UTF-8 text file; a recipe is a TOML file") from None
        base_dir = path.resolve().parent
    overridden = apply_overrides(raw, overrides)
    ctx = RecipeContext(path, overridden)
    return _validate(raw, ctx, base_dir)


def _deepcopy(d):
    import copy

    return copy.deepcopy(d)


def _validate(raw: dict, ctx: RecipeContext, base_dir: Path) -> Recipe:
    from .methods.config import METHOD_CONFIGS

    for key in raw:
        if key not in SECTIONS and key != "method" and key not in TOP_LEVEL:
            raise ctx.error(key, f"unknown section or key; {suggest(key, [*SECTIONS, 'method'])}"
                                 f"a recipe has [model], [data], [method], [train], [checkpoint], [logging], "
                                 "[validation] and an optional description")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ctx.error("description", "must be a string")
    sections = {name: build_section(cls, raw.get(name, {}), name, ctx, REQUIRED) for name, cls in SECTIONS.items()}

    method_raw = raw.get("method")
    if method_raw is None:
        raise ctx.error("method", f"missing; add a [method] table with name = one of {', '.join(METHOD_CONFIGS)}")
    if not isinstance(method_raw, dict):
        raise ctx.error("method", "must be a table ([method])")
    method_raw = dict(method_raw)
    name = method_raw.pop("name", None)
    if name is None:
        raise ctx.error("method.name", f"missing; add name = one of {', '.join(METHOD_CONFIGS)}")
    if not isinstance(name, str) or name not in METHOD_CONFIGS:
        raise ctx.error("method.name", f"unknown method {name!r}; {suggest(str(name), METHOD_CONFIGS)}"
                                       f"choose one of {', '.join(METHOD_CONFIGS)}")
    method_cfg = build_section(METHOD_CONFIGS[name], method_raw, "method", ctx, REQUIRED)
    try:
        method_cfg.check()
    except SettingError as e:
        raise ctx.error(f"method.{e.key}", e.detail) from None

    r = Recipe(ctx.path, sections["model"], sections["data"], name, method_cfg, sections["train"],
               sections["checkpoint"], sections["logging"], sections["validation"], description, raw)
    _check_values(r, ctx)

    def base_for(key):
        return Path.cwd() if key in ctx.overridden else base_dir

    r.model.source = resolve_source(r.model.source, base_for("model.source"))
    r.model.single_file_config = resolve_source(r.model.single_file_config, base_for("model.single_file_config"))
    r.data.source = (resolve_shard_source(r.data.source, base_for("data.source"))
                     or resolve_source(r.data.source, base_for("data.source")))
    r.data.detector_weights = resolve_path(r.data.detector_weights, base_for("data.detector_weights"))
    r.data.cache_dir = resolve_path(r.data.cache_dir, base_for("data.cache_dir"))
    r.train.output_dir = resolve_path(r.train.output_dir, base_for("train.output_dir"))
    return r


def _check_values(r: Recipe, ctx: RecipeContext) -> None:
    def choice(key, value, options):
        if value not in options:
            shown = ", ".join(repr(o) for o in options)
            raise ctx.error(key, f"{value!r} is not one of {shown}")

    def at_least(key, value, low):
        if value < low:
            raise ctx.error(key, f"must be >= {low}, got {value}")

    if r.model.arch:
        choice("model.arch", r.model.arch, ARCHES)
    choice("model.frozen_dtype", r.model.frozen_dtype, FROZEN_DTYPES)
    choice("model.prediction_type", r.model.prediction_type, PREDICTION_TYPES)
    choice("train.mixed_precision", r.train.mixed_precision, PRECISIONS)
    choice("train.lr_scheduler", r.train.lr_scheduler, LR_SCHEDULERS)
    for key in ("lean", "prepack"):
        value = getattr(r.train, key)
        if isinstance(value, str) and value != "auto":
            raise ctx.error(f"train.{key}", f"{value!r}: use true, false or \"auto\"")
    for key in ("train.max_steps", "train.batch_size", "train.gradient_accumulation_steps", "data.resolution",
                "validation.num_images", "validation.steps"):
        sec, k = key.split(".")
        at_least(key, getattr(getattr(r, sec), k), 1)
    for key in ("train.lr_warmup_steps", "train.max_grad_norm", "train.weight_decay", "checkpoint.every",
                "logging.every", "validation.every", "data.max_samples", "data.num_workers", "train.seed"):
        sec, k = key.split(".")
        at_least(key, getattr(getattr(r, sec), k), 0)
    at_least("checkpoint.keep_last", r.checkpoint.keep_last, 1)
    for key in ("train.snr_gamma", "train.noise_offset", "train.input_perturbation"):
        sec, k = key.split(".")
        at_least(key, getattr(getattr(r, sec), k), 0)
    if not 0.0 <= r.train.ema_decay < 1.0:
        raise ctx.error("train.ema_decay", f"must be in [0, 1) (0 = no EMA; 0.999 is usual), got {r.train.ema_decay}")
    choice("data.cache", r.data.cache, ("off", "auto", "build"))
    if r.data.streaming and r.data.buckets:
        raise ctx.error("data.streaming", "cannot be used with data.buckets = true (bucketing needs every image's "
                                          "size up front); set one of them to false")
    if r.data.streaming and r.data.cache == "build":
        raise ctx.error("data.streaming", "cannot be used with data.cache = 'build' (a cache needs every row up "
                                          "front); set data.cache = 'off' or data.streaming = false")
    at_least("data.bucket_step", r.data.bucket_step, 1)
    at_least("data.shuffle_window", r.data.shuffle_window, 1)
    # The VAEs encode 8 px to one latent: other sizes would be cropped by the encoder (and
    # `scedit sample` refuses them), so the training size must be what sampling can make.
    for key in ("data.resolution", "data.bucket_step"):
        sec, k = key.split(".")
        v = getattr(getattr(r, sec), k)
        if v % 8 and (key == "data.resolution" or r.data.buckets):
            raise ctx.error(key, f"{v} is not a multiple of 8 (the VAE's factor); use e.g. {max(8, v // 8 * 8)}")
    if r.data.buckets and r.data.resolution % r.data.bucket_step:
        raise ctx.error("data.bucket_step", f"{r.data.bucket_step} does not divide data.resolution "
                                            f"{r.data.resolution}; use e.g. 64 for 512 px")
    if r.data.bucket_max_ratio < 1:
        raise ctx.error("data.bucket_max_ratio", f"must be >= 1, got {r.data.bucket_max_ratio}")
    if not r.train.learning_rate > 0:
        raise ctx.error("train.learning_rate", f"must be > 0, got {r.train.learning_rate}")
    if not 0.0 <= r.data.caption_dropout <= 1.0:
        raise ctx.error("data.caption_dropout", f"must be in [0, 1], got {r.data.caption_dropout}")
    if r.train.batch_size % r.train.gradient_accumulation_steps:
        raise ctx.error(
            "train.gradient_accumulation_steps",
            f"{r.train.gradient_accumulation_steps} does not divide train.batch_size {r.train.batch_size} "
            "(batch_size is the total batch of one optimizer step)",
        )
    if r.model.frozen_dtype in ("fp16", "bf16") and r.train.mixed_precision == "no":
        raise ctx.error("model.frozen_dtype", f"{r.model.frozen_dtype} frozen weights need "
                                              "train.mixed_precision = 'fp16' or 'bf16' (or frozen_dtype = 'fp32')")
    for cond, col in r.data.condition_columns.items():
        if cond not in getattr(r.method, "conditions", []):
            raise ctx.error(f"data.condition_columns.{cond}",
                            f"method {r.method_name!r} has no condition {cond!r} "
                            f"(its conditions: {getattr(r.method, 'conditions', []) or 'none'})")


def dataset_recipe(model: str, data: str, resolution: int = 512,
                   conditions: list[str] | tuple[str, ...] = ()) -> dict:
    """The recipe (a dict for `load_recipe`) of the default run on dataset `data` for base `model`: an
    SC-Tuner, or a CSC-Tuner for `conditions`. For commands that take a model and a dataset in place of
    a recipe (`scedit prepare cache --model M --input DATASET`)."""
    method = {"name": "csc", "conditions": list(conditions)} if conditions else {"name": "sc"}
    return {"model": {"source": model}, "data": {"source": data, "resolution": resolution},
            "method": method, "train": {"output_dir": "."}}
