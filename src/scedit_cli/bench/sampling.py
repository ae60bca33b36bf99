"""Sampling speed: plain U-Net vs SC-Tuners vs one/two CSC conditions vs ControlNet, in one run.

All variants share one real-size U-Net with random weights (`architectures.build_unet`,
no download) and run through diffusers' own pipelines
(`StableDiffusionPipeline`, `StableDiffusionControlNetPipeline` for ControlNet)
with the same DDIM scheduler, classifier-free guidance, prompt embeddings and
latents. Text encoding and VAE decoding are the same for every variant and are
left out (`prompt_embeds` in, `output_type="latent"` out), so the figures
compare exactly what the methods add to the denoising loop. CSC timings include
encoding the condition images (once per image, not per step); ControlNet runs
its encoder at every step, as it must.

Variants run round-robin `repeats` times after one warm-up each, so drift in
machine load hits all of them alike; the reported figure is the median. Each
row also gives this process's CPU time per image: on a shared CPU machine,
where other processes steal wall time, that is the steadier comparison; and the
ATen operators one denoising step dispatches (`metrics.dispatch.OpCounter`, a
two-step run less a one-step run), what a batch-1 GPU run, which waits on
kernel launches, pays for (on a CPU the sampling edit does not stack skips, so
the tuners count more kernels there than on a GPU).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import SceditError

if TYPE_CHECKING:  # torch and diffusers load once the settings are checked
    import torch

VARIANTS = ("plain", "sc", "csc1", "csc2", "controlnet")
LABELS = {
    "plain": "plain U-Net",
    "sc": "+ SC-Tuners (all skips, ratio 1)",
    "csc1": "+ 1 CSC condition",
    "csc2": "+ 2 CSC conditions (Eq. 7)",
    "controlnet": "+ ControlNet",
}
# Issue 18's sampling goals: overhead over the plain U-Net, one and two CSC conditions.
GOALS_PCT = {"csc1": 5.0, "csc2": 10.0}


@dataclass
class SamplingRow:
    variant: str
    label: str
    extra_params: int
    runs: list[float] = field(default_factory=list)  # wall seconds per image, one per repeat
    cpu_runs: list[float] = field(default_factory=list)  # this process's CPU seconds per image
    hint_encoder_calls: int = 0
    ops_per_step: int | None = None  # ATen operators one denoising step dispatches
    kernels_per_step: int | None = None  # ... of them not views (each a kernel launch on a GPU)

    @property
    def seconds_per_image(self) -> float:
        return statistics.median(self.runs)

    def to_dict(self, plain: float | None, plain_cpu: float | None = None, plain_kernels: int | None = None) -> dict:
        spi = self.seconds_per_image
        cpu = statistics.median(self.cpu_runs) if self.cpu_runs else None
        return {
            "variant": self.variant,
            "label": self.label,
            "seconds_per_image": round(spi, 4),
            "min_seconds_per_image": round(min(self.runs), 4),
            "overhead_pct": None if plain is None else round(100 * (spi / plain - 1), 2),
            "extra_params_m": round(self.extra_params / 1e6, 2),
            "cpu_seconds_per_image": None if cpu is None else round(cpu, 4),
            "cpu_overhead_pct": None if cpu is None or not plain_cpu else round(100 * (cpu / plain_cpu - 1), 2),
            "runs": [round(r, 4) for r in self.runs],
            "hint_encoder_calls": self.hint_encoder_calls,
            "ops_per_step": self.ops_per_step,
            "kernels_per_step": self.kernels_per_step,
            "kernel_overhead_pct": None if not plain_kernels or self.kernels_per_step is None
            else round(100 * (self.kernels_per_step / plain_kernels - 1), 2),
        }


@dataclass
class SamplingBench:
    """What `bench_sampling` measured: its settings and one row per variant (`to_dict()`: the --json form)."""

    arch: str
    resolution: int
    steps: int
    batch: int
    repeats: int
    guidance_scale: float
    hint_kernel: int
    device: str
    dtype: str
    torch_threads: int
    rows: list[SamplingRow]

    def row_dicts(self) -> list[dict]:
        """Each row with its overheads over the plain U-Net's (wall and CPU time)."""
        plain = next(r for r in self.rows if r.variant == "plain")
        plain_cpu = statistics.median(plain.cpu_runs) if plain.cpu_runs else None
        return [r.to_dict(plain.seconds_per_image, plain_cpu, plain.kernels_per_step) for r in self.rows]

    def to_dict(self) -> dict:
        rows = self.row_dicts()
        by = {r["variant"]: r for r in rows}
        goal = {f"{v}_within_goal": by[v]["overhead_pct"] <= pct if v in by else None for v, pct in GOALS_PCT.items()}
        return {"arch": self.arch, "resolution": self.resolution, "steps": self.steps, "batch": self.batch,
                "repeats": self.repeats, "guidance_scale": self.guidance_scale, "hint_kernel": self.hint_kernel,
                "device": self.device, "dtype": self.dtype, "torch_threads": self.torch_threads, "rows": rows,
                "goals_pct": dict(GOALS_PCT), **goal}


def _randomize_(module: torch.nn.Module, seed: int) -> None:
    """Non-zero weights everywhere (a fresh tuner's zero layers would not change the timing, but be honest)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))


# The training method and its settings behind each variant.
METHODS = {"sc": ("sc", {}), "csc1": ("csc", {"conditions": ["canny"]}),
           "csc2": ("csc", {"conditions": ["canny", "color"]}), "controlnet": ("controlnet", {"conditions": ["canny"]})}


def set_up_variant(variant: str, base, hint_kernel: int):
    """The training method behind `variant` (`METHODS`), set up on `base`; a tuner method's tuners are
    taken off the U-Net again (attached per run)."""
    from ..methods import build_method
    from ..tuners import detach

    name, config = METHODS[variant]
    method = build_method(name, {**config, "hint_kernel": hint_kernel} if name == "csc" else config)
    method.setup(base)
    if name != "controlnet":
        detach(base.unet)
    return method


def variant_tuners(method, dtype: torch.dtype, seed: int) -> tuple[list, list[float]]:
    """A tuner method's tuners with random non-zero weights, OPs in the base's precision (as `scedit
    sample` runs them), and their weights (Eq. 7: the method's alphas)."""
    tuners = [method.tuner] if method.name == "sc" else list(method.tuners)
    for i, t in enumerate(tuners):
        _randomize_(t, seed + i)
        t.ops_in(dtype, copy=False)
    return tuners, [1.0] if method.name == "sc" else list(method.weights)


def _scheduler():
    from diffusers import DDIMScheduler

    # Stable Diffusion 1.x / 2.x noise schedule.
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def check_sampling_bench(arch: str | None, resolution: int, steps: int, batch: int, repeats: int,
                         variants: tuple[str, ...] = VARIANTS) -> tuple[str, ...]:
    """Refuse settings the benchmark cannot run (`arch` None: a U-Net of the caller's); returns the
    variants with the plain U-Net first. Needs no torch: `scedit bench sampling` answers at once."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SceditError(f"unknown benchmark variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    for name, v in (("--steps", steps), ("--batch", batch), ("--repeats", repeats)):
        if v < 1:
            raise SceditError(f"{name} must be >= 1, got {v}")
    if resolution < 64 or resolution % 64:
        raise SceditError(f"--resolution {resolution}: must be a multiple of 64 (>= 64)")
    if arch is not None and arch not in ("sd15", "sd21"):
        raise SceditError(f"--arch {arch!r}: the sampling benchmark runs sd15 or sd21 (SD pipelines)")
    return variants if "plain" in variants else ("plain", *variants)


def bench_sampling(
    unet=None,
    arch: str = "sd15",
    resolution: int = 512,
    steps: int = 50,
    batch: int = 1,
    repeats: int = 3,
    guidance_scale: float = 7.5,
    device: str | None = "auto",
    dtype: str | None = None,
    hint_kernel: int = 3,
    variants: tuple[str, ...] = VARIANTS,
    on_run=None,
) -> SamplingBench:
    """Seconds per image of each variant; `unet` overrides the real-size `arch` U-Net (e.g. a tiny one)."""
    variants = check_sampling_bench(arch if unet is None else None, resolution, steps, batch, repeats, variants)
    import torch
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

    from ..devices import resolve_device
    from ..metrics.dispatch import OpCounter
    from ..models import BaseModel, parse_dtype
    from ..precision import inference_dtype
    from ..tuners import CSCTuner, attach, detach

    arch_name = arch if unet is None else f"custom ({type(unet).__name__})"
    dev = resolve_device(device)
    torch_dtype = parse_dtype(dtype) or inference_dtype(dev)
    if unet is None:
        from ..architectures import build_unet

        unet = build_unet(arch, device=dev, dtype=torch_dtype)
    else:
        unet = unet.to(dev, torch_dtype)
    unet.eval()

    common = dict(vae=None, text_encoder=None, tokenizer=None, unet=unet, safety_checker=None,
                  feature_extractor=None, requires_safety_checker=False)
    pipe = StableDiffusionPipeline(scheduler=_scheduler(), **common)
    pipe.set_progress_bar_config(disable=True)
    factor = pipe.vae_scale_factor

    g = torch.Generator().manual_seed(0)
    dim = unet.config.cross_attention_dim
    embeds = torch.randn(batch, 77, dim, generator=g).to(dev, torch_dtype)
    neg = torch.randn(batch, 77, dim, generator=g).to(dev, torch_dtype)
    latent = resolution // factor
    latents = torch.randn(batch, unet.config.in_channels, latent, latent, generator=g).to(dev, torch_dtype)
    conds = [torch.rand(batch, 3, resolution, resolution, generator=g).to(dev) for _ in range(2)]

    # Every variant's modules come from the training methods themselves (`build_method(...).setup`);
    # the tuners are taken off again and attached per run below.
    base = BaseModel.from_unet(unet, is_sdxl=False, vae_scale_factor=factor)
    methods = {v: set_up_variant(v, base, hint_kernel) for v in variants if v != "plain"}
    tuned = {v: variant_tuners(m, torch_dtype, seed=1 + 2 * i) for i, (v, m) in enumerate(methods.items())
             if v != "controlnet"}
    cpipe = None
    if "controlnet" in variants:
        controlnet = methods["controlnet"].controlnet.to(dev, torch_dtype).eval()
        cpipe = StableDiffusionControlNetPipeline(controlnet=controlnet, scheduler=_scheduler(), **common)
        cpipe.set_progress_bar_config(disable=True)
    rows = {v: SamplingRow(v, LABELS[v], methods[v].num_trainable() if v in methods else 0) for v in variants}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def run(variant: str, n_steps: int) -> tuple[float, float]:
        kwargs = dict(prompt_embeds=embeds, negative_prompt_embeds=neg, latents=latents.clone(), height=resolution,
                      width=resolution, num_inference_steps=n_steps, guidance_scale=guidance_scale,
                      output_type="latent")
        tuners, weights = tuned.get(variant, ([], []))
        editor = attach(unet, tuners, weights) if tuners else None
        try:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                for t, c in zip(tuners, conds):
                    if isinstance(t, CSCTuner):
                        t.set_condition(c)  # once per image, reused by every step and both CFG halves
                        rows[variant].hint_encoder_calls += 1
                if variant == "controlnet":
                    cpipe(image=conds[0], **kwargs)
                else:
                    pipe(**kwargs)
            sync()
            return (time.perf_counter() - t0) / batch, (time.process_time() - c0) / batch
        finally:
            if editor is not None:
                detach(unet)
                for t in tuners:
                    if isinstance(t, CSCTuner):
                        t.set_hints(None)

    for v in rows:  # warm-up (allocations, kernels), then the operator counts; not timed
        run(v, 1)
        counts = []
        for n in (1, 2):
            with OpCounter() as counter:
                run(v, n)
            counts.append(counter)
        rows[v].ops_per_step = counts[1].total - counts[0].total
        rows[v].kernels_per_step = counts[1].kernels - counts[0].kernels
        rows[v].hint_encoder_calls = 0
    for r in range(repeats):
        for v in rows:
            wall, cpu = run(v, steps)
            rows[v].runs.append(wall)
            rows[v].cpu_runs.append(cpu)
            if on_run is not None:
                on_run(v, r)

    return SamplingBench(
        arch=arch_name, resolution=resolution, steps=steps, batch=batch, repeats=repeats,
        guidance_scale=guidance_scale, hint_kernel=hint_kernel,
        device=str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        dtype=str(torch_dtype).replace("torch.", ""), torch_threads=torch.get_num_threads(),
        rows=list(rows.values()),
    )
