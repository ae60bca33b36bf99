"""The sampling skip edit against the training one, alone: all skips of a real-size U-Net, one step.

Three paths, alternating in one run. `block`: what the U-Net's hooks run when sampling on a GPU
(`SkipEditor.edit_block` per up block, `tuners.fused.edit`: all tuners in one pixel MLP, same-shape skips
stacked, the terms fixed for an image made once). `skip`: the same without stacking, what they run on a
CPU. `training`: every tuner takes its autograd-ready path (folded copies, `addmm`, the hint tiled and
scaled at every call, one tuner after the other), what sampling ran before the fused edit. All run on the skip shapes of SD 1.5 / 2.1 at `--resolution` with the CFG batch (2 per
image), tuner OPs in the base's dtype as `scedit sample` has them, and report milliseconds per U-Net step
(median of `--repeats`) and ATen kernels per step (`metrics.dispatch.OpCounter`).

    PYTHONPATH=src python benchmarks/bench_skip_edit.py --resolution 512 --out benchmarks/results/skip-edit-cpu-512.json

`--tiny` keeps the architecture's skip structure with channels 8 / 16 / 32 / 32 (the tests' tiny SD U-Net):
with next to no arithmetic the time is the host's, Python and the dispatcher, which is what a GPU at
batch 1 waits on (`--resolution 64`: 8x8 to 1x1 skips).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import time
from unittest import mock

import torch

from scedit_cli.architectures import build_unet, unet_config
from scedit_cli.metrics.dispatch import OpCounter
from scedit_cli.bench.sampling import set_up_variant, variant_tuners
from scedit_cli.fsutil import write_json_atomic
from scedit_cli.models import BaseModel
from scedit_cli.tuners import CSCTuner, SkipLayout, attach, detach, fused

PATHS = ("block", "skip", "training")

VARIANTS = ("sc", "csc1", "csc2")  # `scedit bench sampling`'s tuner variants


def tiny_unet(arch: str, device: str = "meta"):
    """`arch`'s U-Net with the tests' tiny widths (the same blocks, layers and skips, ~1/40 of the channels),
    on `device` (elsewhere than meta: random weights from the current seed)."""
    from diffusers import UNet2DConditionModel

    config = {**unet_config(arch), "block_out_channels": (8, 16, 32, 32), "norm_num_groups": 8}
    with torch.device(device):
        return UNet2DConditionModel(**config)


def skip_inputs(layout: SkipLayout, latent: int, batch: int, dtype, device) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {s: torch.randn(batch, c, latent // f, latent // f, generator=g).to(device, dtype)
            for s, (c, f) in enumerate(zip(layout.channels, layout.downscale))}


def make_editor(unet, variant, resolution, dtype, device):
    """`variant`'s tuners as `scedit bench sampling` builds them (random non-zero weights, OPs in `dtype`),
    condition images encoded, attached to `unet`."""
    base = BaseModel.from_unet(unet, is_sdxl=False, vae_scale_factor=8)
    tuners, weights = variant_tuners(set_up_variant(variant, base, hint_kernel=3), dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    for t in tuners:
        t.to(device)  # a meta U-Net leaves them where they were built
        if isinstance(t, CSCTuner):
            with torch.no_grad():
                t.set_condition(torch.rand(1, t.config.in_channels, resolution, resolution, generator=g).to(device))
    return attach(unet, tuners, weights, freeze=False)


def one_step(editor, skips, blocks, name):
    editor.stack_skips = name == "block"  # whatever the device's default
    for block in blocks:
        editor.edit_block(block, [skips[s] for s in block])


@contextlib.contextmanager
def path(name: str):
    """`training`: every tuner takes the path it has outside sampling (what sampling ran before the fused
    edit); the others: as sampling runs now."""
    with contextlib.ExitStack() as stack:
        if name == "training":
            stack.enter_context(mock.patch.object(fused, "sampling", lambda x: False))
        yield


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2, help="U-Net batch (2: one image with CFG)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--tiny", action="store_true", help="channels 8/16/32/32: host time only (see above)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    unet = build_unet(args.arch, device="meta") if not args.tiny else tiny_unet(args.arch)
    layout = SkipLayout.from_unet(unet)
    skips = skip_inputs(layout, args.resolution // 8, args.batch, dtype, args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    for variant in VARIANTS:
        editor = make_editor(unet, variant, args.resolution, dtype, args.device)
        row = {"variant": variant}
        for name in PATHS:
            with torch.no_grad(), path(name):
                one_step(editor, skips, layout.up_block_skips, name)  # warm-up; the terms made once per image
                with OpCounter() as counter:
                    one_step(editor, skips, layout.up_block_skips, name)
            row[f"{name}_kernels"] = counter.kernels
            row[f"{name}_ops"] = counter.total
        times = {name: [] for name in PATHS}
        for _ in range(args.repeats):
            for name in PATHS:
                with torch.no_grad(), path(name):
                    sync()
                    t0 = time.perf_counter()
                    one_step(editor, skips, layout.up_block_skips, name)
                    sync()
                    times[name].append(1000 * (time.perf_counter() - t0))
        for name, ts in times.items():
            row[f"{name}_ms"] = round(statistics.median(ts), 3)
        for name in ("block", "skip"):
            row[f"speedup_{name}"] = round(row["training_ms"] / row[f"{name}_ms"], 3)
        detach(unet)
        rows.append(row)
        print(json.dumps(row), flush=True)
    argv = sys.argv[1:] if argv is None else argv
    result = {"command": shlex.join(["python", "benchmarks/bench_skip_edit.py", *argv]),
              "arch": args.arch + (" (tiny widths)" if args.tiny else ""), "resolution": args.resolution,
              "batch": args.batch, "dtype": args.dtype,
              "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
              "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "rows": rows}
    if args.out:
        write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
