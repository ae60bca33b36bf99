"""`scedit bench sampling`: seconds per image, plain U-Net vs SC / CSC tuners vs ControlNet."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from ..console import out_console, print_json, progress
from ..values import finite_float
from . import on_interrupt
from .bench import bench_app


@bench_app.command("sampling")
def bench_sampling_command(
    arch: str = typer.Option("sd15", "--arch", help="Real-size U-Net with random weights: sd15 or sd21."),
    resolution: int = typer.Option(512, "--resolution", help="Image size in px (multiple of 64)."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps per image."),
    batch: int = typer.Option(1, "--batch", help="Images per pipeline call."),
    repeats: int = typer.Option(3, "--repeats", help="Timed runs per variant (median reported)."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", parser=finite_float,
                                         help="CFG scale (> 1: two U-Net halves per step)."),
    hint_kernel: int = typer.Option(3, "--hint-kernel", help="CSC dense-cascade kernel k (official configs: 3)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, fp16, bf16 (default: fp16 on GPU, fp32 on CPU)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's choice)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Sampling cost of SCEdit vs the plain U-Net and ControlNet (real SD architecture, random weights)."""
    on_interrupt("nothing was written; run the command again")
    from ..bench.sampling import VARIANTS, bench_sampling, check_sampling_bench
    from ..errors import SceditError

    check_sampling_bench(arch, resolution, steps, batch, repeats)  # before torch loads
    if threads is not None:
        if threads < 1:
            raise SceditError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)

    with progress() as bar:
        task = bar.add_task("benchmark runs", total=repeats * len(VARIANTS))
        result = bench_sampling(arch=arch, resolution=resolution, steps=steps, batch=batch, repeats=repeats,
                                guidance_scale=guidance_scale, device=device, dtype=dtype, hint_kernel=hint_kernel,
                                on_run=lambda v, r: bar.advance(task))
    if json_out:
        print_json(result.to_dict())
        return
    table = Table(title=(f"Sampling, {result.arch} {resolution}px, {steps} DDIM steps, batch {batch}, "
                         f"CFG {guidance_scale}, {result.device} {result.dtype}"))
    for col in ("variant", "s / image", "overhead", "kernels / step", "kernel overhead", "extra params (M)"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in result.row_dicts():
        table.add_row(r["label"], f"{r['seconds_per_image']:.3f}", f"{r['overhead_pct']:+.1f}%",
                      str(r["kernels_per_step"]), f"{r['kernel_overhead_pct']:+.1f}%", f"{r['extra_params_m']:.2f}")
    out_console.print(table)
