"""`scedit bench table1|table2|table5|table6`: the efficiency columns of the paper's tables, measured.

Every method of a table runs in one invocation on the same base architecture,
batch and resolution: the real-size SD 1.5 / SD 2.1 U-Net with random weights
(no download; `--model` loads real weights, `--unet-config` any diffusers U-Net
configuration). Each method is set up by the same `build_method(...).setup(base)`
the trainer uses and stepped by the training loop's `training_step` (noise,
timesteps, target, MSE, backward, AdamW) on random latents and text embeddings.
Per method, in the same run: trainable parameters, peak training memory
(`metrics.memory`) and the median step time (`metrics.timing`); then each
figure's ratio to the table's baseline, beside the paper's figure and ratio.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import SceditError
from ..fsutil import atomic_path, check_output_location, write_json_atomic
from ..lean import resolve_lean
from ..metrics.memory import MemoryReport, gib, measure_step_memory, release_memory, unet_regions
from ..metrics.timing import StepTiming, time_steps

GB = 1e9  # the paper's "G" (memory columns); our GiB figures are converted for the side-by-side


@dataclass(frozen=True)
class MethodSpec:
    label: str
    method: str
    config: dict
    paper_params_m: float | None = None
    paper_mem_gb: float | None = None
    paper_time_ratio: float | None = None
    paper_mem_ratio: float | None = None  # where the paper states a ratio but no figure
    train: dict = field(default_factory=dict)  # TrainSection overrides for this row (memory options)


@dataclass(frozen=True)
class Target:
    """`method`'s figure must be at most `max_ratio` x `versus`'s (the paper's ratio, which we mean to beat)."""

    method: str
    versus: str
    metric: str  # "memory" | "time"
    max_ratio: float


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    arch: str
    baseline: str
    methods: tuple[MethodSpec, ...]
    targets: tuple[Target, ...] = ()
    note: str = ""


_CANNY = {"conditions": ["canny"]}
_FF = {"recompute_feed_forward": True}

TABLES: dict[str, TableSpec] = {
    "table1": TableSpec(
        "table1", "Table 1: text-to-image tuning efficiency (SD 1.5)", "sd15", "Full",
        (
            MethodSpec("Full", "full", {}, 859.52, 53.46, 1.00),
            MethodSpec("LoRA r=64", "lora", {"rank": 64}, 23.94, 60.57, 1.24),
            MethodSpec("LoRA r=6", "lora", {"rank": 6}, 2.24, 59.94, 1.20),
            MethodSpec("SCEdit", "sc", {}, 19.68, 29.02, 0.78),
            MethodSpec("SCEdit ratio 10", "sc", {"ratio": 10}, 1.98, 28.06, 0.77),
            # Not in the paper: the feed-forward recompute (train.recompute_feed_forward) spends some of
            # a method's time on memory; both rows show what it buys SCEdit and LoRA.
            MethodSpec("SCEdit + FF recompute", "sc", {}, 19.68, train=_FF),
            MethodSpec("LoRA r=64 + FF recompute", "lora", {"rank": 64}, 23.94, train=_FF),
        ),
        (
            Target("SCEdit", "LoRA r=64", "memory", 0.48),
            Target("SCEdit", "Full", "memory", 0.55),
            Target("SCEdit", "Full", "time", 0.78),
            Target("SCEdit", "LoRA r=64", "time", 0.63),
        ),
        "paper: batch 32, 512 px, A100, AMP fp16",
    ),
    "table2": TableSpec(
        "table2", "Table 2: controllable generation efficiency (SD 2.1, canny)", "sd21", "ControlNet",
        (
            MethodSpec("ControlNet", "controlnet", _CANNY, 364.23, None, 1.00),
            MethodSpec("T2I-Adapter", "t2i-adapter", _CANNY, 77.37, None, 0.92),
            MethodSpec("ControlNet-XS", "controlnet-xs", _CANNY, 55.30, None, 0.97),
            MethodSpec("ControlLoRA", "controllora", _CANNY, 21.52, None, 1.34),
            MethodSpec("SCEdit k=1", "csc", {**_CANNY, "hint_kernel": 1}, 28.82, 34.78, 0.87, paper_mem_ratio=0.70),
            MethodSpec("SCEdit k=3", "csc", {**_CANNY, "hint_kernel": 3}, 99.11, 35.28, 0.87),
        ),
        (
            Target("SCEdit k=1", "ControlNet", "memory", 0.70),
            Target("SCEdit k=1", "ControlNet", "time", 0.87),
        ),
        "paper: batch 64, 512 px, A100; SCEdit memory figures from Table 6, the 0.70 ratio from the text "
        "('30% reduction in memory'); Table 2's single Mem. figure (37.01G) has no clear row",
    ),
    "table5": TableSpec(
        "table5", "Table 5: SC-Tuner ablations (SD 1.5)", "sd15", "ratio 1",
        (
            MethodSpec("ratio 1", "sc", {}, 19.68, 29.02),
            MethodSpec("ratio 5", "sc", {"ratio": 5}, 3.94, 28.29),
            MethodSpec("ratio 10", "sc", {"ratio": 10}, 1.98, 28.06),
            MethodSpec("skips {0,11}", "sc", {"skips": [0, 11]}, 3.48, 28.11),
            MethodSpec("skips {0,3,6,9,11}", "sc", {"skips": [0, 3, 6, 9, 11]}, 7.79, 28.56),
            MethodSpec("Conv", "sc", {"op": "conv3x3", "ratio": 8}, 22.13, 28.65),
        ),
        (),
        "paper: batch 32, 512 px, A100, AMP fp16",
    ),
    "table6": TableSpec(
        "table6", "Table 6: CSC-Tuner ablations (SD 2.1, canny)", "sd21", "k=1",
        (
            MethodSpec("k=1", "csc", {**_CANNY, "hint_kernel": 1}, 28.82, 34.78),
            MethodSpec("k=3", "csc", {**_CANNY, "hint_kernel": 3}, 99.11, 35.28),
            MethodSpec("skips {0,3,4,6,7,9,11}", "csc", {**_CANNY, "hint_kernel": 1, "skips": [0, 3, 4, 6, 7, 9, 11]},
                       17.14, 34.48),
            MethodSpec("Dual Conv", "csc", {**_CANNY, "hint_kernel": 1, "op": "conv3x3", "ratio": 6}, 37.82, 35.31),
        ),
        (),
        "paper: batch 64, 512 px, A100",
    ),
}

PREDICTION = {"sd15": "epsilon", "sd21": "v_prediction", "sdxl": "epsilon"}


@dataclass
class BenchSettings:
    arch: str | None = None  # sd15 / sd21 (default: the table's)
    unet_config: str | None = None  # a diffusers U-Net config.json (any architecture)
    model: str | None = None  # real weights: a diffusers folder (or HF id in the cache)
    device: str = "cpu"
    batch: int = 1
    resolution: int = 256
    steps: int = 3
    warmup: int = 1
    precision: str = "auto"  # auto | no | fp16 | bf16
    methods: list[str] | None = None  # labels to run (default: all)
    seed: int = 0
    text_tokens: int = 77
    recompute_feed_forward: bool = False  # train.recompute_feed_forward, for every method alike
    lean: bool | str = "auto"  # train.lean, for every method alike


@dataclass
class MethodResult:
    label: str
    method: str
    config: dict
    trainable_params: int
    memory: dict
    timing: dict
    peak_bytes: int
    step_time_s: float
    saved_encoder_bytes: int
    memory_ratio: float | None = None
    time_ratio: float | None = None
    rss_ratio: float | None = None
    paper_params_m: float | None = None
    paper_mem_gb: float | None = None
    paper_mem_ratio: float | None = None
    paper_time_ratio: float | None = None
    final_loss: float | None = None
    train: dict = field(default_factory=dict)


@dataclass
class TableResult:
    table: str
    title: str
    baseline: str
    base: str
    machine: dict
    settings: dict
    rows: list[MethodResult] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --- building the base ------------------------------------------------------------------------

def _read_unet_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SceditError(f"--unet-config {p}: no such file; give a diffusers U-Net config.json")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SceditError(f"--unet-config {p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict):
        raise SceditError(f"--unet-config {p}: expected a JSON object of UNet2DConditionModel settings")
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _model_parts(model: str):
    """(unet folder or id + subfolder, prediction type) of a diffusers pipeline folder."""
    p = Path(model).expanduser()
    pred, factor = "epsilon", 8
    sched = p / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        pred = json.loads(sched.read_text()).get("prediction_type", "epsilon")
    vae = p / "vae" / "config.json"
    if vae.is_file():
        factor = 2 ** (len(json.loads(vae.read_text()).get("block_out_channels", [0] * 4)) - 1)
    return p, pred, factor


class BaseFactory:
    """Builds a fresh, identical base U-Net for each method (same seed / same weights)."""

    def __init__(self, default_arch: str, s: BenchSettings):
        from diffusers import UNet2DConditionModel

        from ..architectures import ARCH_NAMES, unet_config

        self.s = s
        self.vae_scale_factor = 8
        if sum(x is not None for x in (s.unet_config, s.model)) > 1:
            raise SceditError("give at most one of --unet-config and --model")
        if s.model is not None:
            path, self.prediction_type, self.vae_scale_factor = _model_parts(s.model)
            self.description = f"{s.model} (real weights)"
            self._load = lambda: UNet2DConditionModel.from_pretrained(str(path), subfolder="unet")
            try:
                self.config = dict(UNet2DConditionModel.load_config(str(path), subfolder="unet"))
            except Exception as e:  # noqa: BLE001 - missing folder / not cached: the user's to fix
                raise SceditError(f"--model {s.model}: no U-Net found ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                  "give a local diffusers pipeline folder with a unet/ subfolder") from None
        else:
            arch = s.arch or default_arch
            if s.unet_config is not None:
                self.config = _read_unet_config(s.unet_config)
                self.description = f"{s.unet_config} (random weights)"
                self.prediction_type = PREDICTION.get(arch, "epsilon")
            else:
                self.config = unet_config(arch)
                self.description = f"{ARCH_NAMES[arch]} U-Net, real size, random weights"
                self.prediction_type = PREDICTION[arch]
            try:
                with torch.device("meta"):
                    UNet2DConditionModel(**self.config)
            except (TypeError, ValueError) as e:
                raise SceditError(f"--unet-config {s.unet_config}: not a valid UNet2DConditionModel "
                                  f"configuration ({str(e).splitlines()[0]})") from None
            self._load = None
        self.is_sdxl = self.config.get("addition_embed_type") == "text_time"

    def build(self):
        from diffusers import UNet2DConditionModel

        from ..models import BaseModel

        if self._load is not None:
            unet = self._load()
        else:
            torch.manual_seed(self.s.seed)
            # Random init directly on a GPU is much faster than on the CPU and then a copy.
            with torch.device(self.s.device if torch.device(self.s.device).type == "cuda" else "cpu"):
                unet = UNet2DConditionModel(**self.config)
        return BaseModel.from_unet(unet, is_sdxl=self.is_sdxl, prediction_type=self.prediction_type,
                                   vae_scale_factor=self.vae_scale_factor, source=self.description)


# --- one method ---------------------------------------------------------------------------------

def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). 'auto' is the paper's AMP fp16 on a GPU and fp32 on a CPU."""
    if precision not in ("auto", "no", "fp16", "bf16"):
        raise SceditError(f"--precision {precision!r}: choose auto, no, fp16 or bf16")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "no":
        return None
    if device.type == "cpu" and precision == "fp16":
        raise SceditError("--precision fp16 needs a GPU; use --precision no (or bf16) on a CPU")
    return torch.float16 if precision == "fp16" else torch.bfloat16


def _random_batch(method, base, s: BenchSettings, device: torch.device):
    from ..methods import condition_channels
    from ..training import StepBatch

    if s.resolution % base.vae_scale_factor:
        raise SceditError(f"--resolution {s.resolution} must be a multiple of the VAE factor {base.vae_scale_factor}")
    cfg = base.unet.config
    latent = s.resolution // base.vae_scale_factor
    g = torch.Generator().manual_seed(s.seed + 1)
    latents = torch.randn(s.batch, cfg.in_channels, latent, latent, generator=g)
    ehs = torch.randn(s.batch, s.text_tokens, cfg.cross_attention_dim, generator=g)
    added = None
    if base.is_sdxl:
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.randn(s.batch, text_dim, generator=g).to(device),
                 "time_ids": torch.tensor([[s.resolution, s.resolution, 0, 0, s.resolution, s.resolution]] * s.batch,
                                          dtype=torch.float32, device=device)}
    conds = None
    if method.conditions:
        conds = [torch.rand(s.batch, condition_channels(c), s.resolution, s.resolution, generator=g).to(device)
                 for c in method.conditions]
    return StepBatch(latents.to(device), ehs.to(device), added, conds)


def _check_layout(base, s: BenchSettings) -> None:
    latent = s.resolution // base.vae_scale_factor
    n_down = sum(1 for b in base.unet.down_blocks if getattr(b, "downsamplers", None))
    if latent % (2 ** n_down):
        raise SceditError(f"--resolution {s.resolution}: the latent size {latent} must be divisible by "
                          f"{2 ** n_down} for this U-Net ({n_down} downsamplers); use a multiple of "
                          f"{base.vae_scale_factor * 2 ** n_down}")


@dataclass
class MethodRun:
    """One method set up on a fresh base, ready to take training steps (`step()`)."""

    method: object
    base: object
    params: list
    optimizer: torch.optim.Optimizer
    train: object  # the TrainSection it runs with
    step: Callable[[], None]
    state: dict


def setup_method(spec: MethodSpec, factory: BaseFactory, s: BenchSettings) -> MethodRun:
    """Build a fresh base, set `spec`'s method up on it as `scedit train` would, and return its step."""
    from ..methods import build_method
    from ..recipes import TrainSection
    from ..training.loop import prepare_training, training_step

    device = torch.device(s.device)
    autocast = resolve_precision(s.precision, device)
    frozen = autocast or torch.float32
    method = build_method(spec.method, dict(spec.config))
    base = factory.build()
    _check_layout(base, s)
    method.setup(base)
    # Exactly as `scedit train` prepares a run with the paper's Table 4 settings (AdamW, lr 5e-5,
    # weight decay 0.01, gradient clipping at 1.0), in this precision.
    mp = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(autocast, "no")
    cfg = TrainSection(**{"mixed_precision": mp, "recompute_feed_forward": s.recompute_feed_forward,
                          "lean": s.lean, **spec.train})
    params, optimizer, scaler, _, noise_scheduler = prepare_training(method, base, device, frozen, cfg)
    batch = _random_batch(method, base, s, device)
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    state = {"i": 0, "loss": None}

    def step():
        g = torch.Generator(gen_device).manual_seed(s.seed * 1000003 + state["i"])
        state["i"] += 1
        state["loss"] = training_step(method, base, batch, optimizer, noise_scheduler, g, autocast, scaler,
                                      max_grad_norm=cfg.max_grad_norm, params=params)

    return MethodRun(method, base, params, optimizer, cfg, step, state)


def run_method(spec: MethodSpec, factory: BaseFactory, s: BenchSettings,
               on_step: Callable[[], None] | None = None) -> MethodResult:
    """Set up one method on a fresh base, time `steps` training steps after `warmup`, then
    account one more step's memory."""
    run = setup_method(spec, factory, s)
    unet, extra = run.base.unet, run.method.extra_modules()
    timing: StepTiming = time_steps(run.step, s.steps, s.warmup, s.device, on_step)
    regions = unet_regions(unet)
    for i, m in enumerate(extra):
        if m is not unet:
            regions[f"{type(m).__name__}" + (f"[{i}]" if len(extra) > 1 else "")] = m
    memory: MemoryReport = measure_step_memory(run.step, modules=[unet, *[m for m in extra if m is not unet]],
                                               trainable=run.params, optimizer=run.optimizer, device=s.device,
                                               regions=regions)
    if on_step:
        on_step()
    result = MethodResult(
        label=spec.label, method=spec.method, config=dict(spec.config),
        trainable_params=sum(p.numel() for p in run.params),
        memory=memory.to_dict(), timing=timing.to_dict(),
        peak_bytes=memory.peak_bytes, step_time_s=timing.median_s,
        saved_encoder_bytes=memory.saved_upstream_bytes(),
        paper_params_m=spec.paper_params_m, paper_mem_gb=spec.paper_mem_gb,
        paper_mem_ratio=spec.paper_mem_ratio, paper_time_ratio=spec.paper_time_ratio,
        final_loss=run.state["loss"], train={"recompute_feed_forward": run.train.recompute_feed_forward,
                                                      "lean": resolve_lean(run.train.lean)},
    )
    del run, unet, extra  # the base, optimizer and activations go before the next method is built
    release_memory()
    return result


# --- the table ----------------------------------------------------------------------------------

def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def select_methods(table: TableSpec, labels: list[str] | None) -> list[MethodSpec]:
    if not labels:
        return list(table.methods)
    by_label = {m.label.lower(): m for m in table.methods}
    chosen = []
    for lab in labels:
        m = by_label.get(lab.strip().lower())
        if m is None:
            raise SceditError(f"--methods {lab!r}: {table.name} has no such row; choose from "
                              f"{', '.join(repr(m.label) for m in table.methods)}")
        chosen.append(m)
    if table.baseline.lower() not in {m.label.lower() for m in chosen}:
        chosen.insert(0, next(m for m in table.methods if m.label == table.baseline))
    return chosen


def compute_ratios(result: TableResult) -> None:
    """Each row's ratio to the baseline measured in this run, and the targets' verdicts."""
    rows = {r.label: r for r in result.rows}
    base = rows[result.baseline]
    base_spec_mem = base.paper_mem_gb
    for r in result.rows:
        r.memory_ratio = r.peak_bytes / base.peak_bytes if base.peak_bytes else None
        r.time_ratio = r.step_time_s / base.step_time_s if base.step_time_s else None
        rss, brss = r.memory.get("peak_rss_bytes"), base.memory.get("peak_rss_bytes")
        r.rss_ratio = rss / brss if rss and brss else None
        if r.paper_mem_ratio is None and r.paper_mem_gb is not None and base_spec_mem:
            r.paper_mem_ratio = r.paper_mem_gb / base_spec_mem
        if r.paper_time_ratio is not None and base.paper_time_ratio not in (None, 1.0):
            r.paper_time_ratio = r.paper_time_ratio / base.paper_time_ratio
    result.targets = []
    spec = TABLES[result.table]
    for t in spec.targets:
        if t.method not in rows or t.versus not in rows:
            continue
        a, b = rows[t.method], rows[t.versus]
        measured = (a.peak_bytes / b.peak_bytes) if t.metric == "memory" else (a.step_time_s / b.step_time_s)
        result.targets.append({"method": t.method, "versus": t.versus, "metric": t.metric,
                               "measured_ratio": measured, "target_max": t.max_ratio, "met": measured <= t.max_ratio})


def run_table(name: str, s: BenchSettings, on_event: Callable[[str, int], None] | None = None) -> TableResult:
    """Run every method of table `name` and return the measured rows with their ratios.

    `on_event(kind, n)`: ('start', total_steps) once, then ('step', 1) per step, for a progress bar.
    """
    if name not in TABLES:
        raise SceditError(f"unknown table {name!r}; choose one of {', '.join(TABLES)}")
    if s.batch < 1:
        raise SceditError(f"--batch must be >= 1, got {s.batch}")
    if s.resolution < 8:
        raise SceditError(f"--resolution must be >= 8 pixels, got {s.resolution}")
    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SceditError(f"--device {s.device}: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise SceditError(f"--device {s.device}: use cpu or cuda[:N]")
    resolve_precision(s.precision, device)
    table = TABLES[name]
    if s.arch is not None and s.arch not in PREDICTION:
        raise SceditError(f"--arch {s.arch!r}: choose sd15, sd21 or sdxl")
    specs = select_methods(table, s.methods)
    factory = BaseFactory(table.arch, s)
    t0 = time.perf_counter()
    if on_event:
        on_event("start", len(specs) * (s.steps + s.warmup + 1))
    result = TableResult(table=name, title=table.title, baseline=table.baseline, base=factory.description,
                         machine=machine_info(s.device), settings=asdict(s), note=table.note)
    for spec in specs:
        result.rows.append(run_method(spec, factory, s, (lambda: on_event("step", 1)) if on_event else None))
    compute_ratios(result)
    result.seconds = time.perf_counter() - t0
    return result


# --- outputs ------------------------------------------------------------------------------------

def write_outputs(result: TableResult, out_dir: str | Path) -> dict[str, str]:
    """`<table>.json` and `<table>.png` (bar chart of measured vs paper ratios), written atomically."""
    out = check_output_location(out_dir, "--out")
    json_path, png_path = out / f"{result.table}.json", out / f"{result.table}.png"
    write_json_atomic(json_path, result.to_dict())
    bar_chart(result, png_path)
    return {"json": str(json_path), "png": str(png_path)}


def bar_chart(result: TableResult, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [r.label for r in result.rows]
    x = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(labels) * 2), 4.2))
    for ax, what, measured, paper in (
        (axes[0], "peak training memory", [r.memory_ratio for r in result.rows],
         [r.paper_mem_ratio for r in result.rows]),
        (axes[1], "step time", [r.time_ratio for r in result.rows], [r.paper_time_ratio for r in result.rows]),
    ):
        w = 0.38
        ax.bar(x - w / 2, [m or 0 for m in measured], w, label="measured", color="#2b6cb0")
        ax.bar(x + w / 2, [p if p is not None else 0 for p in paper], w, label="paper", color="#a0aec0")
        for i, p in enumerate(paper):
            if p is None:
                ax.text(x[i] + w / 2, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{what} / {result.baseline}")
        ax.legend(fontsize=8)
    s = result.settings
    where = result.machine.get("gpu") or result.machine.get("cpu", "")
    fig.suptitle(f"{result.title}\n{result.base}, batch {s['batch']}, {s['resolution']} px, {where}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{gib(n):.2f}"


# --- one recipe (`scedit eval --params --memory --time RECIPE`) -----------------------------------

def measure_recipe(recipe: str | Path, s: BenchSettings, *, memory: bool = True, timing: bool = True,
                   overrides: list[str] | None = None) -> dict:
    """Trainable parameters, and (when asked) peak training memory and step time of a training recipe.

    The base is the recipe's `model.source` when it is a local diffusers folder (real weights), else the
    published architecture `model.arch` with random weights (said in the result). Batch size,
    resolution and mixed precision come from the recipe unless `s` overrides them.
    """
    from ..methods import build_method
    from ..recipes import load_recipe

    r = load_recipe(recipe, overrides)
    method_cfg = r.method.to_dict()
    src = Path(r.model.source).expanduser() if r.model.source else None
    arch = (r.model.arch or "").replace("-base", "") or None
    if src is not None and src.is_dir():
        s.model = str(src)
    elif arch is None:
        raise SceditError(f"{r.path or recipe}: model.source {r.model.source!r} is not a local folder, so "
                          "the benchmark needs model.arch (sd15, sd21 or sdxl) to build the U-Net with random weights")
    out: dict = {"recipe": str(r.path or recipe), "method": r.method_name, "config": method_cfg}
    if not (memory or timing):
        from .. import architectures

        base_unet = architectures.build_unet(arch, "meta") if s.model is None else None
        if base_unet is None:
            from diffusers import UNet2DConditionModel

            with torch.device("meta"):
                base_unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(s.model, subfolder="unet"))
        from ..models import BaseModel

        method = build_method(r.method_name, method_cfg)
        with torch.device("meta"):
            method.setup(BaseModel.from_unet(base_unet))
        out.update(trainable_params=method.num_trainable(), base=s.model or f"{arch} (meta device)")
        return out
    if s.precision == "auto":
        s.precision = r.train.mixed_precision
    if s.lean == "auto":
        s.lean = r.train.lean
    if s.batch is None:
        s.batch = max(1, r.train.batch_size // r.train.gradient_accumulation_steps)
    if s.resolution is None:
        s.resolution = r.data.resolution
    factory = BaseFactory(arch or "sd15", s)
    spec = MethodSpec(r.name, r.method_name, method_cfg)
    res = run_method(spec, factory, s)
    out.update(trainable_params=res.trainable_params, base=factory.description, settings=asdict(s),
               machine=machine_info(s.device))
    if memory:
        out["memory"] = res.memory
    if timing:
        out["timing"] = res.timing
    return out
