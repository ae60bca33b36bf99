"""`scedit bench ...`: reproduce the paper's tables. Other bench commands add themselves to `bench_app`."""

from __future__ import annotations

import typer
from rich.table import Table

from ..console import out_console, print_json
from . import app, command_group, on_interrupt

bench_app = command_group(help="Reproduce the paper's tables (parameters, memory, time, sampling speed).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("params")
def params_command(
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON on stdout."),
) -> None:
    """Every Params figure of Tables 1, 2, 5 and 6 (and SDXL SC / CSC rows, which the paper has no figure for),
    counted on real-size models built on the meta device."""
    on_interrupt("nothing was written; run the command again")
    from ..bench.params import param_rows

    rows = param_rows()
    if json_out:
        print_json({"rows": [r.to_dict() for r in rows], "all_exact_rows_match": all(r.ok for r in rows)})
    else:
        table = Table(title="Trainable parameters (M): scedit vs the paper")
        for col in ("table", "setting", "base", "scedit", "paper", "diff", "status"):
            table.add_column(col, justify="right" if col in ("scedit", "paper", "diff") else "left")
        notes = []
        for r in rows:
            status = {"exact": "[green]match[/]" if r.ok else "[red]MISMATCH[/]",
                      "closest": "[yellow]closest[/]", "not implemented": "[dim]not implemented[/]",
                      "no paper figure": "[dim]no paper figure[/]"}[r.kind]
            if r.kind != "exact":
                notes.append(f"{r.table} {r.setting}: {r.note}")
                status += f" ({len(notes)})"
            table.add_row(
                r.table, r.setting, r.base,
                "-" if r.params is None else f"{r.params_m:.2f}",
                "–" if r.paper_m is None else f"{r.paper_m:.2f}",
                "-" if r.diff_m is None else f"{r.diff_m:+.2f}",
                status,
            )
        out_console.print(table)
        for i, note in enumerate(notes, 1):
            out_console.print(f"({i}) {note}", highlight=False, markup=False)
    if not all(r.ok for r in rows):
        raise typer.Exit(1)
