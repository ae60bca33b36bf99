"""Tiny pipelines, datasets and recipes for the `scedit train` tests."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
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


def make_shards(folder: Path, n: int = 5, per_shard: int = 2, conditions=("canny",), caption_in="txt",
                seed: int = 0) -> list[Path]:
    """webdataset shards (img2dataset layout) of `make_dataset`'s samples: KEY.png, KEY.txt or KEY.json,
    KEY.<condition>.png; caption i is "red circle i"."""
    folder = Path(folder)
    src = make_dataset(folder / "_src", n=n, conditions=conditions, seed=seed)
    rows = [json.loads(line) for line in (src / "metadata.jsonl").read_text().splitlines()]
    shards = []
    for s in range(0, n, per_shard):
        path = folder / f"shard-{s // per_shard:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s, min(s + per_shard, n)):
                key = f"{i:06d}"
                tar.add(src / rows[i]["image"], f"{key}.png")
                caption = f"red circle {i}".encode()
                if caption_in == "json":
                    caption = json.dumps({"caption": caption.decode(), "width": 48}).encode()
                info = tarfile.TarInfo(f"{key}.{caption_in}")
                info.size = len(caption)
                tar.addfile(info, io.BytesIO(caption))
                for c in conditions:
                    tar.add(src / rows[i][c], f"{key}.{c}.png")
        shards.append(path)
    shutil.rmtree(src)
    return shards
