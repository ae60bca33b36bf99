"""`scedit bench table1|table2|table5|table6`: memory and step time of each table's methods, side by side."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..console import info, out_console, print_json, progress
from . import on_interrupt
from .bench import bench_app

_HELP = {
    "table1": "Table 1 (SD 1.5): Full, LoRA r=64 / r=6, SCEdit, SCEdit ratio 10; baseline Full.",
    "table2": "Table 2 (SD 2.1, canny): ControlNet, T2I-Adapter, ControlNet-XS, ControlLoRA, SCEdit k=1 / k=3; "
              "baseline ControlNet.",
    "table5": "Table 5 (SD 1.5): SC-Tuner ablations (ratio, skips, conv); baseline ratio 1.",
    "table6": "Table 6 (SD 2.1, canny): CSC-Tuner ablations (kernel, skips, dual conv); baseline k=1.",
}


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"x{x:.2f}"


def render(result) -> None:
    from ..bench.chart import fmt_bytes

    s = result.settings
    m = result.machine
    where = m.get("gpu") or f"{m.get('cpu', '?')} ({m.get('cpu_count')} cores)"
    mem_name = "CUDA peak" if "gpu" in m else "tensor peak"
    ff = " · feed-forward recompute" if s.get("recompute_feed_forward") else ""
    ff += f" · lean {s.get('lean', 'auto')} · prepack {s.get('prepack', 'auto')}"
    t = Table(title=f"{result.title}\n{result.base} · batch {s['batch']} · {s['resolution']} px · "
                    f"precision {s['precision']}{ff} · {where}")
    for col in ("method", "params M", "paper M", f"mem GiB ({mem_name})", "x base", "paper x base",
                "peak RSS GiB", "step s", "x base", "paper x base", "encoder saved MiB"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in result.rows:
        t.add_row(
            r.label + (" [dim](baseline)[/]" if r.label == result.baseline else ""),
            f"{r.trainable_params / 1e6:.2f}",
            "-" if r.paper_params_m is None else f"{r.paper_params_m:.2f}",
            fmt_bytes(r.peak_bytes), _ratio(r.memory_ratio),
            _ratio(r.paper_mem_ratio) + ("" if r.paper_mem_gb is None else f" ({r.paper_mem_gb:.2f}G)"),
            fmt_bytes(r.memory.get("peak_rss_bytes")) if r.memory.get("peak_rss_bytes") else "-",
            f"{r.step_time_s:.3f}", _ratio(r.time_ratio), _ratio(r.paper_time_ratio),
            f"{r.saved_encoder_bytes / 2**20:.1f}",
        )
    out_console.print(t)
    if result.targets:
        tt = Table(title="Targets (the paper's ratios, to beat)")
        for col in ("figure", "measured", "target", "verdict"):
            tt.add_column(col, justify="left" if col == "figure" else "right")
        for g in result.targets:
            tt.add_row(f"{g['metric']}: {g['method']} / {g['versus']}", f"x{g['measured_ratio']:.3f}",
                       f"<= x{g['target_max']:.2f}", "[green]met[/]" if g["met"] else "[red]missed[/]")
        out_console.print(tt)
    if result.note:
        info(result.note, style="dim")


def _make(name: str):
    def command(
        arch: str = typer.Option(None, "--arch", help="Base architecture: sd15 or sd21 (default: the table's)."),
        unet_config: Path = typer.Option(None, "--unet-config", help="A diffusers U-Net config.json to build "
                                         "(random weights) instead of the table's architecture."),
        model: str = typer.Option(None, "--model", help="A local diffusers pipeline folder: real U-Net weights."),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
        batch: int = typer.Option(1, "--batch", help="Batch size (the paper: 32 for Tables 1/5, 64 for 2/6)."),
        resolution: int = typer.Option(256, "--resolution", help="Image size in pixels (latent = size / 8)."),
        steps: int = typer.Option(3, "--steps", help="Timed training steps per method (the median is reported)."),
        warmup: int = typer.Option(1, "--warmup", help="Untimed warm-up steps per method."),
        precision: str = typer.Option("auto", "--precision",
                                      help="auto (fp16 AMP on a GPU, fp32 on a CPU), no, fp16 or bf16."),
        methods: str = typer.Option(None, "--methods", help="Comma-separated row labels to run (the baseline "
                                    "is always added)."),
        out: Path = typer.Option(Path("bench-results"), "--out", help="Folder for <table>.json and <table>.png."),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
        check: bool = typer.Option(False, "--check", help="Exit 1 if a target ratio is missed."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random weights and inputs."),
        recompute_ff: bool = typer.Option(False, "--recompute-ff", help="Every method recomputes its transformer "
                                          "feed-forwards in backward (recipe key train.recompute_feed_forward)."),
        lean: bool = typer.Option(None, "--lean/--no-lean", help="The exact activation savings on or off for "
                                  "every method (recipe key train.lean; default auto: on)."),
        prepack: bool = typer.Option(None, "--prepack/--no-prepack", help="Reordered frozen CPU convolutions on "
                                     "or off for every method (recipe key train.prepack; default auto: on)."),
    ) -> None:
        on_interrupt(f"nothing was written to {out} (it gets the results at the end); run the command again")
        from ..bench.specs import BenchSettings
        from ..fsutil import check_output_location

        check_output_location(out, "--out")  # before the measurements, not after them

        s = BenchSettings(arch=arch, unet_config=str(unet_config) if unet_config else None, model=model,
                          device=device, batch=batch, resolution=resolution, steps=steps, warmup=warmup,
                          precision=precision, seed=seed, recompute_feed_forward=recompute_ff,
                          lean="auto" if lean is None else lean, prepack="auto" if prepack is None else prepack,
                          methods=[m for m in methods.split(",") if m.strip()] if methods else None)
        s.table_rows(name)  # a bad --methods label, --batch or --resolution: answered before torch loads
        from ..bench.chart import write_outputs
        from ..bench.runner import run_table

        with progress() as bar:
            task = {}

            def on_event(kind, n):
                if kind == "start":
                    task["id"] = bar.add_task(f"bench {name}", total=n)
                else:
                    bar.advance(task["id"], n)

            result = run_table(name, s, on_event)
        paths = write_outputs(result, out)
        if json_out:
            print_json({**result.to_dict(), "outputs": paths})
        else:
            render(result)
            info(f"wrote {paths['json']} and {paths['png']}")
        if check and not all(g["met"] for g in result.targets):
            raise typer.Exit(1)

    command.__doc__ = _HELP[name] + (" Builds the real-size architecture with random weights (no download) "
                                     "and runs each method's training step in one process.")
    return command


for _name in ("table1", "table2", "table5", "table6"):
    bench_app.command(_name)(_make(_name))
