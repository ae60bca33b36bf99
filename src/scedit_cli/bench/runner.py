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
The tables themselves are data in `specs.py`; the JSON and chart are written by `chart.py`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..architectures import ARCH_NAMES
from ..devices import resolve_device
from ..errors import SceditError
from ..lean import resolve_lean
from ..prepack import resolve_prepack
from ..metrics.memory import MemoryReport, measure_step_memory, release_memory, settled_heap, unet_regions
from ..metrics.timing import StepTiming, time_steps
from ..models import vae_scale_factor
from ..precision import mixed_precision_name, resolve_precision
from .specs import TABLES, BenchSettings, MethodResult, MethodSpec, TableResult

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


class BaseFactory:
    """Builds a fresh, identical base U-Net for each method (same seed / same weights)."""

    def __init__(self, default_arch: str, s: BenchSettings):
        from diffusers import UNet2DConditionModel

        from ..architectures import PREDICTION, pipeline_configs, unet_config

        self.s = s
        self.vae_scale_factor = 8
        if sum(x is not None for x in (s.unet_config, s.model)) > 1:
            raise SceditError("give at most one of --unet-config and --model")
        if s.model is not None:
            path = Path(s.model).expanduser()
            cfgs = pipeline_configs(str(path))
            self.prediction_type = cfgs.get("scheduler", {}).get("prediction_type", "epsilon")
            if "vae" in cfgs:
                self.vae_scale_factor = vae_scale_factor(cfgs["vae"])
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

def random_unet_inputs(unet, s: BenchSettings, vae_factor: int, sdxl: bool, generator: torch.Generator,
                       device: torch.device):
    """(latents, text embeddings, SDXL added conditions or None) for `s.batch` images at `s.resolution`,
    drawn from `generator` in that order."""
    cfg = unet.config
    latent = s.resolution // vae_factor
    latents = torch.randn(s.batch, cfg.in_channels, latent, latent, generator=generator)
    ehs = torch.randn(s.batch, s.text_tokens, cfg.cross_attention_dim, generator=generator)
    added = None
    if sdxl:
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.randn(s.batch, text_dim, generator=generator).to(device),
                 "time_ids": torch.tensor([[s.resolution, s.resolution, 0, 0, s.resolution, s.resolution]] * s.batch,
                                          dtype=torch.float32, device=device)}
    return latents.to(device), ehs.to(device), added


def _random_batch(method, base, s: BenchSettings, device: torch.device):
    from ..conditions import condition_channels
    from ..training import StepBatch

    if s.resolution % base.vae_scale_factor:
        raise SceditError(f"--resolution {s.resolution} must be a multiple of the VAE factor {base.vae_scale_factor}")
    g = torch.Generator().manual_seed(s.seed + 1)
    latents, ehs, added = random_unet_inputs(base.unet, s, base.vae_scale_factor, base.is_sdxl, g, device)
    conds = None
    if method.conditions:
        conds = [torch.rand(s.batch, condition_channels(c), s.resolution, s.resolution, generator=g).to(device)
                 for c in method.conditions]
    return StepBatch(latents, ehs, added, conds)


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
    mp = mixed_precision_name(autocast)
    cfg = TrainSection(**{"mixed_precision": mp, "recompute_feed_forward": s.recompute_feed_forward,
                          "lean": s.lean, "prepack": s.prepack, **spec.train})
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
                                                      "lean": resolve_lean(run.train.lean),
                                                      "prepack": resolve_prepack(run.train.prepack)},
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
    table, specs = s.table_rows(name)
    device = resolve_device(s.device)
    if device.type not in ("cpu", "cuda"):
        raise SceditError(f"--device {s.device}: use cpu or cuda[:N]")
    resolve_precision(s.precision, device)
    if s.arch is not None and s.arch not in ARCH_NAMES:
        raise SceditError(f"--arch {s.arch!r}: choose sd15, sd21 or sdxl")
    factory = BaseFactory(table.arch, s)
    t0 = time.perf_counter()
    if on_event:
        on_event("start", len(specs) * (s.steps + s.warmup + 1))
    result = TableResult(table=name, title=table.title, baseline=table.baseline, base=factory.description,
                         machine=machine_info(s.device), settings=asdict(s), note=table.note)
    with settled_heap():
        for spec in specs:
            result.rows.append(run_method(spec, factory, s, (lambda: on_event("step", 1)) if on_event else None))
    compute_ratios(result)
    result.seconds = time.perf_counter() - t0
    return result
