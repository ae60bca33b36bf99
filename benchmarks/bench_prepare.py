"""Throughput of `scedit prepare` (not a test): images/s for canny and color on
512x512 images with 1 and 2 workers.

    python benchmarks/bench_prepare.py --images 128

Inputs are JPEG crops of scikit-image's sample photos, resized to 512x512.
Each timing covers the whole run (decode, map, PNG encode, copy, journal) and
starts from an empty output folder; worker start-up is included.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from scedit_cli.prepare.runner import PrepareConfig, run_prepare


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return 0

    def advance(self, *a):
        pass


def make_inputs(folder: Path, n: int) -> None:
    import skimage.data  # here, not at the top: spawned workers re-import this script

    folder.mkdir(parents=True)
    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(), skimage.data.hubble_deep_field()]
    rng = np.random.default_rng(0)
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        Image.fromarray(src[y : y + s, x : x + s]).resize((512, 512), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=92)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--conditions", default="canny,color")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        make_inputs(src, args.images)
        for cond in args.conditions.split(","):
            for w in map(int, args.workers.split(",")):
                out = Path(tmp) / f"{cond}-{w}"
                t0 = time.perf_counter()
                s = run_prepare(PrepareConfig(cond, str(src), out, workers=w), progress_factory=_NoBar)
                dt = time.perf_counter() - t0
                assert s["rows_out"] == args.images
                results.append({"condition": cond, "workers": w, "images": args.images, "seconds": round(dt, 2), "images_per_second": round(args.images / dt, 1)})
                print(json.dumps(results[-1]), flush=True)
    print(f"cpu cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
