"""`scedit quickstart`: thin wrapper over `scedit_cli.quickstart.run_quickstart`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..values import finite_float
from . import app, on_interrupt


@app.command(
    "quickstart",
    help=(
        "Offline demo on the shipped toy Stable Diffusion (CPU, ~5 min on 2 cores): train an SC-Tuner for a new "
        "style and canny/colour CSC-Tuners, sample before/after, compose, score, and write report.md."
    ),
)
def quickstart_command(
    output: Path = typer.Option(Path("scedit-quickstart"), "--output", "-o", help="Folder for data, tuners, samples and the report."),
    steps_scale: float = typer.Option(1.0, "--steps-scale", parser=finite_float, help="Multiply every recipe's training steps (e.g. 3 to train longer)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the datasets, training and sampling."),
    style: str = typer.Option("half", "--style", help="The new style: half (default; the toy VAE can draw it), outline or striped."),
    n_eval: int = typer.Option(16, "--n-eval", help="Held-out prompts per evaluation."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads in each of the two processes that train at once (default: half the CPUs)."),
    json_out: bool = typer.Option(False, "--json", help="Print report.json on stdout."),
) -> None:
    on_interrupt(f"the quickstart did not finish; run the same command again (it replaces what it wrote in {output})")
    from ..console import err_console, info, print_json
    from ..quickstart import QuickstartSettings, run_quickstart, summary_rows

    settings = QuickstartSettings(output=output, steps_scale=steps_scale, seed=seed, style=style, n_eval=n_eval,
                                  threads=threads)
    result = run_quickstart(settings)
    if json_out:
        print_json(result.report)
        return
    from rich.table import Table

    table = Table(title="scedit quickstart: before -> after")
    table.add_column("score")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for row in summary_rows(result.report):
        table.add_row(*row)
    err_console.print(table)
    t = result.report["timing"]
    info(f"total {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} s CPU; report: {result.report_md}")
