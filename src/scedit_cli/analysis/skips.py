"""`scedit analyze skips`: what the U-Net's skip connections carry (paper Sec. 1 and Fig. 3).

For a base model and prompts, three measurements from the model's own diffusers
pipeline (same seeds throughout):

(a) removal: each skip j alone, and the groups all / high-resolution half /
    low-resolution half, replaced by zero or by its spatial mean (per sample and
    channel); one image per (prompt, seed) and variant, a change score (mean
    absolute pixel difference to the unmodified image, 0..1), and the spread of
    the U-Net's output values (the paper's "output distributions");
(b) per skip, along the denoising trajectory of the unmodified model: mean and
    std of the skip feature and of the backbone feature it is concatenated
    with, and the ratio std(skip) / std(backbone), per timestep;
(c) channel-mean maps of the skip and backbone features per skip, at a few
    timesteps, for the first (prompt, seed).

Skips are removed through the tuner mechanism (`tuners.attach`: a pre-hook on
each up block rewrites `res_hidden_states_tuple`), with a `SkipRemoval` whose
edit is `target - x`. The variants run side by side in one batch, each batch
row with its own removal, so one pipeline call serves many variants; a row
that removes nothing gets an edit of exactly 0. The features for (b) and (c)
are read by forward pre-hooks on the up blocks' resnets, whose input is
`cat([backbone, skip])`: split by the skip's channel count. Statistics use the
text-conditioned half of classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import torch

from ..errors import SceditError
from .settings import SkipAnalysisSettings
from ..tuners import SkipLayout, SkipTuner, TunerConfig, attach, detach, get_editor

HIST_RANGE = 4.0  # U-Net output histogram over [-4, 4] (values beyond land in the end bins)
HIST_BINS = 80


@dataclass(frozen=True)
class Variant:
    """One removal: `skips` (paper indices j) replaced by zero or their spatial mean."""

    name: str
    mode: str
    skips: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.mode}-{self.name}"


def removal_variants(layout: SkipLayout, modes: Sequence[str]) -> list[Variant]:
    """Each skip alone, then all, the high-resolution half and the low-resolution half, per mode.

    The high-resolution half is the first half of the skips in encoder order (nearest the input,
    the last decoder layers): paper indices j >= N - N // 2.
    """
    n = layout.num_skips
    high = tuple(j for j in range(n) if layout.decoder_to_encoder(j) < n // 2)
    low = tuple(j for j in range(n) if j not in high)
    groups = [(f"j{j}", (j,)) for j in range(n)] + [("all", tuple(range(n))), ("high-res-half", high),
                                                    ("low-res-half", low)]
    return [Variant(name, mode, skips) for mode in modes for name, skips in groups]


class SkipRemoval(SkipTuner):
    """An "editor" with no parameters: per batch row, the skips of that row's variant become zero
    or their spatial mean; other rows are left exactly as they are."""

    method: ClassVar[str] = "removal"

    def __init__(self, layout: SkipLayout):
        super().__init__(TunerConfig(), layout)
        self.rows: list[Variant | None] = []  # one per image of the current pipeline call

    def delta(self, skip: int, x: torch.Tensor, hint: torch.Tensor | None = None) -> torch.Tensor | None:
        j = self.encoder_to_decoder[skip]
        zero = [v is not None and v.mode == "zero" and j in v.skips for v in self.rows]
        mean = [v is not None and v.mode == "mean" and j in v.skips for v in self.rows]
        if not any(zero) and not any(mean):
            return None
        reps = x.shape[0] // len(self.rows)  # classifier-free guidance: [uncond rows, cond rows]

        def rows(flags):
            return torch.tensor(flags * reps, device=x.device).view(-1, 1, 1, 1)

        target = torch.where(rows(mean), x.mean((2, 3), keepdim=True), x)
        target = torch.where(rows(zero), torch.zeros((), dtype=x.dtype, device=x.device), target)
        return target - x


@dataclass
class _Moments:
    """Running sum, sum of squares and count (float64): mean and std over many tensors."""

    s: float = 0.0
    ss: float = 0.0
    n: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.s += float(x.sum())
        self.ss += float((x * x).sum())
        self.n += x.numel()

    def mean(self) -> float:
        return self.s / self.n if self.n else float("nan")

    def std(self) -> float:
        if not self.n:
            return float("nan")
        m = self.mean()
        return float(np.sqrt(max(self.ss / self.n - m * m, 0.0)))


@dataclass
class _Trace:
    """What the probes collect over the pipeline calls."""

    timesteps: list[int] = field(default_factory=list)
    skip: dict[tuple[int, int], _Moments] = field(default_factory=dict)  # (j, step) -> moments
    backbone: dict[tuple[int, int], _Moments] = field(default_factory=dict)
    maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # (j, step)
    output: dict[int, _Moments] = field(default_factory=dict)  # variant index -> U-Net output moments
    hist: dict[int, np.ndarray] = field(default_factory=dict)  # variant index -> output histogram


class Probes:
    """Forward hooks that read the skip / backbone features and the U-Net output of chosen rows."""

    def __init__(self, unet, layout: SkipLayout, map_steps: set[int]):
        self.layout = layout
        self.trace = _Trace()
        self.map_steps = map_steps
        self.rows: list[int] = []  # variant index per image of the current call (0: unmodified)
        self.step = 0
        self._hooks = [unet.register_forward_pre_hook(self._on_unet_input, with_kwargs=True),
                       unet.register_forward_hook(self._on_unet_output)]
        for block, skips in zip(unet.up_blocks, layout.up_block_skips):
            for r, resnet in enumerate(block.resnets):
                enc = skips[len(skips) - 1 - r]  # each resnet pops the last skip still unconsumed
                self._hooks.append(resnet.register_forward_pre_hook(self._resnet_hook(enc), with_kwargs=True))

    def start_call(self, rows: list[int]) -> None:
        self.rows, self.step = rows, 0

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()

    def _cond(self, x: torch.Tensor) -> torch.Tensor:
        """The text-conditioned rows (the second half under classifier-free guidance)."""
        return x[x.shape[0] - len(self.rows):]

    def _on_unet_input(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        if self.step == len(self.trace.timesteps):
            self.trace.timesteps.append(int(torch.as_tensor(t).flatten()[0]))

    def _on_unet_output(self, module, args, out):
        sample = out[0] if isinstance(out, tuple) else out.sample
        cond = self._cond(sample)
        for v in set(self.rows):
            x = cond[[i for i, r in enumerate(self.rows) if r == v]].float()
            self.trace.output.setdefault(v, _Moments()).add(x)
            hist = torch.histc(x.clamp(-HIST_RANGE, HIST_RANGE), HIST_BINS, -HIST_RANGE, HIST_RANGE)
            self.trace.hist[v] = self.trace.hist.get(v, 0) + hist.double().cpu().numpy()
        self.step += 1

    def _resnet_hook(self, enc: int):
        j = self.layout.num_skips - 1 - enc
        c_skip = self.layout.channels[enc]

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["input_tensor"]
            base_rows = [i for i, r in enumerate(self.rows) if r == 0]
            if base_rows:
                cond = self._cond(x)[base_rows].float()
                backbone, skip = cond[:, :-c_skip], cond[:, -c_skip:]
                self.trace.skip.setdefault((j, self.step), _Moments()).add(skip)
                self.trace.backbone.setdefault((j, self.step), _Moments()).add(backbone)
                if self.step in self.map_steps and (j, self.step) not in self.trace.maps:
                    self.trace.maps[(j, self.step)] = (skip[0].mean(0).cpu().numpy(), backbone[0].mean(0).cpu().numpy())
            return None

        return hook


def map_step_indices(steps: int, count: int) -> list[int]:
    """`count` denoising steps spread from the first to the last."""
    return sorted({round(i * (steps - 1) / max(1, count - 1)) for i in range(count)})


@dataclass
class SkipRun:
    """The images of every variant (`images[v][i]`, variant 0 the unmodified model) and the probes' trace."""

    images: list[list]
    inputs: list[tuple]  # (PromptSpec, seed) per image
    variants: list[Variant | None]
    trace: _Trace
    layout: SkipLayout
    size: tuple[int, int]
    calls: int


def run_skip_analysis(base, prompts, settings: SkipAnalysisSettings, on_step=None) -> SkipRun:
    """Generate every (prompt, seed) with every variant; `prompts` are `PromptSpec`s."""
    from ..sampling.jobs import image_size  # the output size rule of `scedit sample`
    from ..sampling.schedulers import make_scheduler

    settings.validate()
    pipe = base.pipeline
    unet = pipe.unet
    if get_editor(unet) is not None:
        raise SceditError("this U-Net has tuners attached; analyze the base model alone")
    layout = SkipLayout.from_unet(unet)
    variants: list[Variant | None] = [None, *removal_variants(layout, settings.modes)]
    images = [(p, seed) for p in prompts for seed in (p.seeds or settings.seeds)]
    width, height = image_size(base, settings)
    items = [(v, i) for v in range(len(variants)) for i in range(len(images))]
    calls = [items[k:k + settings.batch_size] for k in range(0, len(items), settings.batch_size)]
    results: list[list] = [[None] * len(images) for _ in variants]
    removal = SkipRemoval(layout)

    def step_end(_pipe, _i, _t, kwargs):
        if on_step is not None:
            on_step()
        return kwargs

    probes = Probes(unet, layout, set(map_step_indices(settings.steps, settings.shown_steps)))
    old_scheduler = pipe.scheduler
    try:
        pipe.scheduler = make_scheduler(settings.scheduler, old_scheduler)
        pipe.set_progress_bar_config(disable=True)
        attach(unet, [removal], [1.0])
        for call in calls:
            removal.rows = [variants[v] for v, _ in call]
            probes.start_call([v for v, _ in call])
            out = pipe(
                prompt=[images[i][0].prompt for _, i in call],
                negative_prompt=[images[i][0].negative_prompt or "" for _, i in call],
                height=height, width=width, num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(images[i][1]) for _, i in call],
                output_type="pil",
                callback_on_step_end=step_end,
            )
            for (v, i), image in zip(call, out.images):
                results[v][i] = image
    finally:
        pipe.scheduler = old_scheduler
        probes.remove()
        if get_editor(unet) is not None:
            detach(unet)
    return SkipRun(results, images, variants, probes.trace, layout, (width, height), len(calls))


def change_scores(images: list[list]) -> list[list[float]]:
    """Per variant, per image: mean absolute pixel difference to the unmodified image (0..1)."""
    base = [np.asarray(im.convert("RGB"), np.float32) / 255.0 for im in images[0]]
    return [[float(np.abs(np.asarray(im.convert("RGB"), np.float32) / 255.0 - b).mean())
             for im, b in zip(row, base)] for row in images]


def skip_table(layout: SkipLayout) -> list[dict]:
    """Per paper index j: encoder index, channels, downscale, and the up block / resnet consuming it."""
    where = {}
    for b, skips in enumerate(layout.up_block_skips):
        for r in range(len(skips)):
            where[skips[len(skips) - 1 - r]] = (b, r)
    rows = []
    for j in range(layout.num_skips):
        enc = layout.decoder_to_encoder(j)
        rows.append({"j": j, "encoder_index": enc, "channels": layout.channels[enc],
                     "downscale": layout.downscale[enc], "up_block": where[enc][0], "resnet": where[enc][1]})
    return rows


def trajectory(trace: _Trace, n_skips: int) -> list[dict]:
    steps = range(len(trace.timesteps))
    out = []
    for j in range(n_skips):
        sk = [trace.skip[(j, s)] for s in steps]
        bb = [trace.backbone[(j, s)] for s in steps]
        out.append({
            "j": j,
            "skip_mean": [m.mean() for m in sk], "skip_std": [m.std() for m in sk],
            "backbone_mean": [m.mean() for m in bb], "backbone_std": [m.std() for m in bb],
            "ratio": [a.std() / b.std() if b.std() > 0 else float("nan") for a, b in zip(sk, bb)],
        })
    return out


__all__ = ["SkipRemoval", "SkipRun", "Variant", "removal_variants", "run_skip_analysis"]
