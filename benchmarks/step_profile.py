"""Where a training step's time goes, per method (a diagnostic for Table 1's time ratio).

For each method (as `scedit bench` sets it up) it runs warm-up steps, then:

- phases: `--steps` steps timed around the U-Net's forward (CUDA events on a GPU, the clock on a CPU):
  before the forward (noise, timesteps), the forward, and after it (loss, backward, optimizer), as
  medians in ms; on a GPU also the host's wall time, so a launch-bound step shows;
- operators: `--profile-steps` steps under `torch.profiler`; each operator's own device time (its
  kernels on a GPU, its CPU time on a CPU) per step, summed into categories (`CATEGORIES`: convolution,
  matmul, attention, norm, elementwise, copy, ...; on a CPU also the host's own: autograd's nodes, our
  autograd functions' Python, views and allocation), with the top operators and, on a GPU, kernels.

Comparing two methods' categories says which work one does that the other does not (SCEdit's step is
the forward plus the decoder's input-gradient backward; LoRA's adds the encoder's backward and the
adapters' own products).

Usage (real-size SD 1.5, random weights, on a GPU):
    python benchmarks/step_profile.py --methods "SCEdit,LoRA r=64" --batch 32 --out results/profile-gpu
writes `profile-gpu.json` and `profile-gpu.png` (categories per method, ms per step). A method that fails
is reported in the JSON and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from scedit_cli.bench.runner import BaseFactory, machine_info, setup_method
from scedit_cli.bench.specs import select_methods
from scedit_cli.bench.specs import TABLES, BenchSettings
from scedit_cli.fsutil import atomic_path, write_json_atomic
from scedit_cli.metrics.memory import release_memory
from scedit_cli.metrics.timing import synchronize

# First match wins (searched in the name after its last "::"): optimizer and clipping before norm
# (linalg_vector_norm); autograd's own nodes (stock `...Backward0`, our functions' `..Backward`, the
# engine's wrappers) before the operator kinds their names contain; attention before matmul.
CATEGORIES = (
    ("optimizer", r"_foreach_|_fused_adam|^Optimizer\.|clip_grad|linalg_vector_norm|_amp_"),
    ("autograd", r"Backward\d*$|AccumulateGrad|evaluate_function"),
    ("python functions", r"^_?[A-Z][A-Za-z0-9]*$"),  # forwards of autograd.Functions (`_Norm`, `_FrozenConv2d`)
    ("attention", r"attention|flash|sdpa"),
    ("convolution", r"conv"),
    ("norm", r"_norm\b|norm_backward|group_norm|layer_norm"),
    ("matmul", r"\b(mm|addmm|bmm|baddbmm|matmul|linear|_addmm_activation)\b"),
    ("copy", r"copy|\bto\b|\bcat\b|clone|contiguous|index|fill_|zero_|slice_backward"),
    ("reduce", r"\b(sum|mean|mse_loss|mse_loss_backward|max|amax)\b"),
    ("elementwise", r"\b(add|add_|sub|mul|mul_|div|div_|neg|gelu|gelu_backward|silu|silu_backward|sigmoid|"
                    r"where|pow|sqrt|rsqrt|exp|threshold_backward|lerp_?|addcmul_?|addcdiv_?)\b"),
    ("views and allocation", r"^(view|t|transpose|as_strided_?|empty\w*|reshape|_reshape_alias|slice|expand|"
                             r"permute|unsqueeze|squeeze|select|detach|alias|_unsafe_view|resolve_conj|"
                             r"resolve_neg|item|_local_scalar_dense|split|chunk|narrow|unflatten|flatten|"
                             r"set_|lift_fresh|result_type)$"),
)
_COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]


def category(op: str) -> str:
    """The category of an operator name (`aten::addmm`, `mkldnn::_convolution_pointwise`, ...)."""
    name = op.split("::")[-1]
    return next((c for c, rx in _COMPILED if rx.search(name)), "other")


def _device_us(evt) -> float:
    """An averaged event's own device time in us (`self_device_time_total`; older torch: `self_cuda_...`)."""
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def time_phases(run, steps: int, device: torch.device) -> dict:
    """Median ms before, in and after the U-Net's forward, and per step, over `steps` steps."""
    cuda = device.type == "cuda"
    marks: dict[str, object] = {}

    def now():
        if cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def elapsed_ms(a, b) -> float:
        return a.elapsed_time(b) if cuda else (b - a) * 1e3

    def forward_starts(module, args):  # the first U-Net call of the step; returns None: args unchanged
        if "fwd_start" not in marks:
            marks["fwd_start"] = now()

    def forward_ends(module, args, output):  # the last one
        marks["fwd_end"] = now()

    unet = run.base.unet
    handles = [unet.register_forward_pre_hook(forward_starts), unet.register_forward_hook(forward_ends)]
    rows = []
    try:
        for _ in range(steps):
            marks.clear()
            wall0 = time.perf_counter()
            marks["start"] = now()
            run.step()
            marks["end"] = now()
            synchronize(device)
            wall = (time.perf_counter() - wall0) * 1e3
            rows.append({"before_forward_ms": elapsed_ms(marks["start"], marks["fwd_start"]),
                         "forward_ms": elapsed_ms(marks["fwd_start"], marks["fwd_end"]),
                         "after_forward_ms": elapsed_ms(marks["fwd_end"], marks["end"]),
                         "step_ms": elapsed_ms(marks["start"], marks["end"]), "host_wall_ms": wall})
    finally:
        for h in handles:
            h.remove()
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def profile_ops(run, steps: int, device: torch.device, top: int = 15) -> dict:
    """Each operator's own device time per step over `steps` profiled steps, by category."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run.step()
        synchronize(device)
    ops, kernels = [], []
    for evt in prof.key_averages():
        # A kernel's row (device time, no CPU time): its time is already in the operator that launched it.
        on_device = cuda and (str(evt.device_type).endswith("CUDA") or evt.cpu_time_total == 0)
        us = _device_us(evt) if cuda else float(evt.self_cpu_time_total)
        row = {"name": evt.key, "ms": us / 1e3 / steps, "calls": evt.count / steps}
        if on_device:
            kernels.append(row)
        elif us > 0 or not cuda:
            row["host_ms"] = evt.self_cpu_time_total / 1e3 / steps
            ops.append(row)
    cats: dict[str, dict] = {}
    for row in ops:
        c = cats.setdefault(category(row["name"]), {"ms": 0.0, "calls": 0.0})
        c["ms"] += row["ms"]
        c["calls"] += row["calls"]
    ops.sort(key=lambda r: -r["ms"])
    kernels.sort(key=lambda r: -r["ms"])
    return {"total_ms": sum(r["ms"] for r in ops),
            "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1]["ms"])),
            "top_ops": [{**r, "category": category(r["name"])} for r in ops[:top]],
            "top_kernels": kernels[:top]}


def chart(results: dict, path, title: str, cuda: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m for m in results if "profile" in results[m]]
    cats = [c for c, _ in CATEGORIES] + ["other"]
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.6 * len(labels)))
    left = [0.0] * len(labels)
    colours = plt.get_cmap("tab20").colors
    for i, c in enumerate(cats):
        widths = [results[m]["profile"]["categories"].get(c, {}).get("ms", 0.0) for m in labels]
        ax.barh(labels, widths, left=left, label=c, color=colours[i % len(colours)])
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel(f"ms per step, each operator's own {'device' if cuda else 'CPU'} time")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", default="table1")
    ap.add_argument("--methods", default="SCEdit,LoRA r=64")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="steps timed around the forward (medians)")
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--lean", default="auto", choices=["auto", "true", "false"])
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="cuDNN times its convolution algorithms for each new shape (torch.backends.cudnn.benchmark)")
    ap.add_argument("--unet-config", default=None, help="a diffusers U-Net config.json instead of the table's")
    ap.add_argument("--out", required=True, help="output path without suffix: OUT.json and OUT.png")
    a = ap.parse_args(argv)
    lean = {"auto": "auto", "true": True, "false": False}[a.lean]
    torch.backends.cudnn.benchmark = a.cudnn_benchmark  # warm-up steps run the timing
    s = BenchSettings(device=a.device, batch=a.batch, resolution=a.resolution, steps=a.steps, warmup=a.warmup,
                      precision=a.precision, lean=lean, unet_config=a.unet_config)
    table = TABLES[a.table]
    factory = BaseFactory(table.arch, s)
    device = torch.device(a.device)
    asked = [m.strip() for m in a.methods.split(",")]
    results: dict[str, dict] = {}
    for spec in [m for m in select_methods(table, asked) if m.label in asked]:
        run = None
        try:
            run = setup_method(spec, factory, s)
            for _ in range(a.warmup):
                run.step()
            results[spec.label] = {"phases": time_phases(run, a.steps, device),
                                   "profile": profile_ops(run, a.profile_steps, device)}
        except Exception as e:  # a diagnostic: report, go on to the next method, exit 1 at the end
            results[spec.label] = {"error": f"{type(e).__name__}: {e}"}
        run = None
        release_memory()
        r = results[spec.label]
        print(spec.label, json.dumps(r.get("phases", r), indent=1))
        for c, v in r.get("profile", {}).get("categories", {}).items():
            print(f"   {c:12s} {v['ms']:9.2f} ms  {v['calls']:7.0f} calls")
    argv = sys.argv[1:] if argv is None else argv
    out = {"command": shlex.join(["python", "benchmarks/step_profile.py", *argv]),
           "settings": vars(a), "machine": machine_info(a.device), "methods": results}
    write_json_atomic(f"{a.out}.json", out)
    where = out["machine"].get("gpu") or out["machine"].get("cpu", "")
    chart(results, f"{a.out}.png", f"{a.table}, batch {a.batch}, {a.resolution} px, {where}", device.type == "cuda")
    return out


if __name__ == "__main__":
    sys.exit(1 if any("error" in r for r in main()["methods"].values()) else 0)
