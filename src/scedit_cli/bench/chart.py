"""The outputs of `scedit bench tableN`: the result JSON and a bar chart of measured vs paper ratios."""

from __future__ import annotations

from pathlib import Path

from ..fsutil import atomic_path, check_output_location, write_json_atomic
from ..metrics.memory import gib
from .specs import TableResult


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
