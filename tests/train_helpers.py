"""Tiny pipelines, datasets and recipes for the `scedit train` tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tiny_models import make_tiny_pipeline


def make_dataset(folder: Path, n: int = 4, size=(40, 48), conditions=("canny",), seed: int = 0,
                 text_column: str = "text") -> Path:
    """A `scedit prepare`-style folder: images/, conditions/<name>/, metadata.jsonl."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = size
        yy, xx = np.mgrid[:h, :w]
        img = np.zeros((h, w, 3), np.uint8)
        img[...] = rng.integers(0, 255, 3)
        mask = (yy - h / 2) ** 2 + (xx - w / 2 - i) ** 2 < (min(h, w) / 4) ** 2
        img[mask] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(folder / "images" / f"{i}.png")
        row = {"image": f"images/{i}.png", text_column: "red circle"}
        for c in conditions:
            (folder / "conditions" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB").save(folder / "conditions" / c / f"{i}.png")
            row[c] = f"conditions/{c}/{i}.png"
        rows.append(row)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def write_recipe(path: Path, model_path: Path, data_path: Path, method: dict, out: Path, **sections) -> Path:
    """A recipe TOML; `sections` override defaults, e.g. train={"max_steps": 2}."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    secs = {
        "model": {"source": str(model_path)},
        "data": {"source": str(data_path), "resolution": 32},
        "method": method,
        "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3},
        "checkpoint": {"every": 0, "keep_last": 2},
        "logging": {"every": 1, "tensorboard": False, "loss_curve": False},
    }
    for k, v in sections.items():
        secs.setdefault(k, {}).update(v)
    lines = []
    for name, vals in secs.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {val(v)}" for k, v in vals.items()]
        lines.append("")
    Path(path).write_text("\n".join(lines))
    return Path(path)


__all__ = ["make_dataset", "make_tiny_pipeline", "write_recipe"]
