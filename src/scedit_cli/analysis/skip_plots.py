"""The PNGs of `scedit analyze skips`: image grids (Pillow) and curves (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..fsutil import atomic_path

CELL = 128  # px per image in the removal grids: small images are enlarged (nearest), large ones shrunk
PAD = 4
LABEL_H = 16


def _cell(image: Image.Image) -> Image.Image:
    w, h = image.size
    if max(w, h) < CELL:
        k = CELL // max(w, h)
        return image.resize((w * k, h * k), Image.NEAREST)
    s = 2 * CELL / max(w, h)
    return image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC) if s < 1 else image


def removal_grid(unmodified: list[Image.Image], removed: list[Image.Image], title: str, path: Path) -> Path:
    """Two rows, one column per (prompt, seed): the unmodified images over those with skips removed."""
    rows = [[_cell(im.convert("RGB")) for im in unmodified], [_cell(im.convert("RGB")) for im in removed]]
    w, h = rows[0][0].size
    font = ImageFont.load_default()
    label_w = 80
    sheet = Image.new("RGB", (label_w + len(rows[0]) * (w + PAD) + PAD, LABEL_H + 2 * (h + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 2), title, fill="black", font=font)
    for r, (row, name) in enumerate(zip(rows, ("unmodified", "removed"))):
        y = LABEL_H + PAD + r * (h + PAD)
        draw.text((PAD, y + h // 2 - 6), name, fill="black", font=font)
        for c, im in enumerate(row):
            sheet.paste(im, (label_w + PAD + c * (w + PAD), y))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def change_chart(ablation: list[dict], path: Path) -> Path:
    """Change score per removal variant, one bar colour per mode."""
    plt = _pyplot()
    names = list(dict.fromkeys(a["name"] for a in ablation))
    modes = list(dict.fromkeys(a["mode"] for a in ablation))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4), dpi=100)
    width = 0.8 / len(modes)
    for k, mode in enumerate(modes):
        score = {a["name"]: a["change"] for a in ablation if a["mode"] == mode}
        ax.bar(np.arange(len(names)) + (k - (len(modes) - 1) / 2) * width, [score[n] for n in names], width,
               label=f"replaced by {mode}")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("change (mean |pixel difference|, 0..1)")
    ax.set_title("Removing skip connections: change of the generated images")
    ax.legend()
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.25)
    return _save(fig, path)


def output_distribution(hists: dict[str, np.ndarray], value_range: float, path: Path) -> Path:
    """Density of the U-Net's output values, one curve per variant (the paper's Fig. 3, left)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, hist in hists.items():
        edges = np.linspace(-value_range, value_range, len(hist) + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        density = hist / max(hist.sum(), 1) / (edges[1] - edges[0])
        ax.plot(centres, density, lw=1.5 if label == "unmodified" else 1.0, label=label)
    ax.set_xlabel("U-Net output value (all denoising steps)")
    ax.set_ylabel("density")
    ax.set_title("Output distribution with skip connections removed")
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.14)
    return _save(fig, path)


def _grid_axes(n: int, width: float = 3.2, height: float = 2.4):
    plt = _pyplot()
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), dpi=100, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def trajectory_plot(timesteps: list[int], per_skip: list[dict], skips: list[dict], path: Path) -> Path:
    """Per skip j: std (solid) and mean (dashed) of the skip and backbone features over the timesteps."""
    fig, axes = _grid_axes(len(per_skip))
    for ax, row, info in zip(axes, per_skip, skips):
        for key, colour in (("skip", "tab:orange"), ("backbone", "tab:blue")):
            ax.plot(timesteps, row[f"{key}_std"], color=colour, label=f"{key} std")
            ax.plot(timesteps, row[f"{key}_mean"], color=colour, ls="--", label=f"{key} mean")
        ax.set_title(f"j={row['j']} ({info['channels']} ch, 1/{info['downscale']})", fontsize=9)
        ax.invert_xaxis()  # denoising runs from high to low timesteps
        ax.set_xlabel("timestep", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.93, bottom=0.1, hspace=0.5, wspace=0.25)
    return _save(fig, path)


def ratio_plot(timesteps: list[int], per_skip: list[dict], path: Path) -> Path:
    """std(skip) / std(backbone) per timestep, one curve per skip j."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    cmap = plt.get_cmap("viridis")
    for k, row in enumerate(per_skip):
        ax.plot(timesteps, row["ratio"], color=cmap(k / max(1, len(per_skip) - 1)), label=f"j={row['j']}")
    ax.invert_xaxis()
    ax.set_xlabel("timestep")
    ax.set_ylabel("std(skip) / std(backbone)")
    ax.set_title("How strong each skip is next to the backbone feature it joins")
    ax.legend(fontsize=7, ncol=2)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.14)
    return _save(fig, path)


def feature_map_grid(maps: dict, steps: list[int], timesteps: list[int], n_skips: int, path: Path) -> Path:
    """Rows: skips j; columns: for each shown timestep the skip's and the backbone's channel-mean map,
    each on its own colour scale (viridis: dark low, yellow high)."""
    import matplotlib

    viridis = matplotlib.colormaps["viridis"]
    cell, label_w, head_h = 72, 40, 28
    cols = 2 * len(steps)
    sheet = Image.new("RGB", (label_w + cols * (cell + PAD) + PAD, head_h + n_skips * (cell + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for c, step in enumerate(steps):
        for k, what in enumerate(("skip", "backbone")):
            x = label_w + PAD + (2 * c + k) * (cell + PAD)
            draw.text((x, 2), f"t={timesteps[step]}", fill="black", font=font)
            draw.text((x, 14), what, fill="black", font=font)
            for j in range(n_skips):
                a = np.asarray(maps[(j, step)][k], np.float64)
                span = a.max() - a.min()
                a = (a - a.min()) / span if span > 0 else np.zeros_like(a)
                im = Image.fromarray((viridis(a)[..., :3] * 255).astype(np.uint8))
                sheet.paste(im.resize((cell, cell), Image.NEAREST), (x, head_h + PAD + j * (cell + PAD)))
    for j in range(n_skips):
        draw.text((PAD, head_h + PAD + j * (cell + PAD) + cell // 2 - 6), f"j={j}", fill="black", font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
