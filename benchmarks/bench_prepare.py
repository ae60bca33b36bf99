"""Throughput of `scedit prepare` (not a test): images/s for canny and color on
512x512 images with 1 and 2 workers.

    python benchmarks/bench_prepare.py --images 128 --out benchmarks/results/prepare-cpu.json

Inputs are JPEG crops of scikit-image's sample photos, resized to 512x512.
Each timing covers the whole run (decode, map, PNG encode, copy, journal) and
starts from an empty output folder; worker start-up is included.

Besides wall-clock images/s, each run reports the CPU time it used (this process
plus its worker processes) and images per CPU-second: on a machine shared with
other work the wall clock depends on the load, the CPU time much less; on an idle
machine with as many cores as workers, wall-clock images/s comes close to
workers x images per CPU-second, less the worker start-up. `--repeat` runs every
case that many times, interleaved, and the JSON keeps every run and the best.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
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


def _cpu_seconds() -> float:
    """CPU time of this process and of its ended (waited-for) children: the workers of finished runs."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _machine() -> dict:
    import cv2
    import PIL

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor()) \
        if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "pillow": PIL.__version__, "opencv": cv2.__version__}


def run_once(cond: str, workers: int, src: Path, out: Path, images: int) -> dict:
    load = os.getloadavg()[0]
    c0, t0 = _cpu_seconds(), time.perf_counter()
    s = run_prepare(PrepareConfig(cond, str(src), out, workers=workers), progress_factory=_NoBar)
    dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    assert s.rows_out == images, s.rows_out
    return {"condition": cond, "workers": workers, "images": images, "seconds": round(dt, 3), "images_per_second": round(images / dt, 1),
            "cpu_seconds": round(cpu, 3), "images_per_cpu_second": round(images / cpu, 1), "load_average_1min": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--conditions", default="canny,color")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeat", type=int, default=1, help="runs of every case, interleaved")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        make_inputs(src, args.images)
        for r in range(args.repeat):
            for cond in args.conditions.split(","):
                for w in map(int, args.workers.split(",")):
                    runs.append(run_once(cond, w, src, Path(tmp) / f"{cond}-{w}-{r}", args.images))
                    print(json.dumps(runs[-1]), flush=True)
    best = {}
    for run in runs:  # fastest wall clock per case: the run least slowed by other work on the machine
        key = f"{run['condition']}-{run['workers']}"
        if key not in best or run["seconds"] < best[key]["seconds"]:
            best[key] = run
    result = {"command": "python " + " ".join(sys.argv), "machine": _machine(), "best": best, "runs": runs}
    print(json.dumps({k: (v["images_per_second"], v["images_per_cpu_second"]) for k, v in best.items()}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
if __name__ == "__main__":
    main()
