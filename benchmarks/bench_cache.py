"""Step time with the latent / text / condition cache vs without (issue 8; not a test).

    python benchmarks/bench_cache.py --resolution 256 --steps 3 --threads 2 --out benchmarks/results/cache-cpu.json

Real-size SD 1.5 U-Net, VAE and CLIP text encoder with random weights (configs in
scedit_cli.architectures). One training step of SC-Tuner and of a CSC-Tuner (canny, k=3)
is timed both ways, alternating A/B so that load from other processes hits both alike:

  uncached: decode the PNG, resize + crop, VAE encode (+ posterior sample), CLIP text encode of
            77 tokens, for CSC compute the canny map; then the training step (prepare_training +
            training_step: forward, backward, clip, AdamW)
  cached:   read the entry (posterior moments, text embedding, condition map) from a cache file
            written by cache.CacheStore, posterior sample; then the same training step

Reports the median wall time and the median process CPU time per step, and their ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scedit_cli.architectures import build_text_encoder, build_unet, build_vae
from scedit_cli.cache import CacheStore
from scedit_cli.conditions.tensor import condition_tensor
from scedit_cli.data import pixel_tensor
from scedit_cli.images import resize_crop
from scedit_cli.methods import build_method
from scedit_cli.models import BaseModel
from scedit_cli.training import StepBatch, prepare_training, training_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="sc,csc")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    R, B = a.resolution, a.batch
    vae, te = build_vae("sd15").eval(), build_text_encoder("sd15").eval()
    vae.requires_grad_(False)
    te.requires_grad_(False)
    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(B):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (R + R // 4, R, 3), dtype=np.uint8)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    ids = torch.randint(0, 49408, (B, 77), generator=torch.Generator().manual_seed(0))
    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    for name in a.methods.split(","):
        cfg = {"conditions": ["canny"], "hint_kernel": 3} if name == "csc" else {}
        method = build_method(name, cfg)
        base = BaseModel.from_unet(build_unet("sd15", "cpu"))
        base.pipeline.vae, base.pipeline.text_encoder = vae, te
        method.setup(base)
        params, opt, scaler, _, sched = prepare_training(method, base, torch.device("cpu"), torch.float32)

        def load_pixels():
            imgs = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
            crops = [resize_crop(im, R)[0] for im in imgs]
            return crops, torch.stack([pixel_tensor(c) for c in crops])

        def canny(crops):
            from scedit_cli.conditions import compute_condition_maps

            maps = [compute_condition_maps("canny", c, rng=np.random.default_rng(0))["canny"].convert("RGB")
                    for c in crops]
            return [torch.stack([condition_tensor([m]) for m in maps])]

        # the cache entry, written and read by the real store
        with torch.no_grad():
            crops, px = load_pixels()
            moments = vae.encode(px).latent_dist.parameters
            ehs = te(ids)[0]
            conds = canny(crops) if name == "csc" else None
        store = CacheStore(tmp / name)
        store.write("bench", {f"k{i}": {"moments": moments[i], "embeds": ehs[i],
                                        **({"c0": (conds[0][i] * 255).round().to(torch.uint8)} if conds else {})}
                              for i in range(B)}, {})
        store = CacheStore(tmp / name)
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        def gens(i):
            return [torch.Generator().manual_seed(1000 * i + j) for j in range(B)]

        def uncached(i):
            with torch.no_grad():
                crops, px = load_pixels()
                lat = vae.encode(px).latent_dist.sample(generator=gens(i)) * vae.config.scaling_factor
                e = te(ids)[0]
                c = canny(crops) if name == "csc" else None
            return training_step(method, base, StepBatch(lat, e, None, c), opt, sched, gens(i),
                                 max_grad_norm=1.0, params=params)

        def cached(i):
            entries = [store.get(f"k{j}") for j in range(B)]
            m = torch.stack([x["moments"] for x in entries])
            lat = DiagonalGaussianDistribution(m).sample(generator=gens(i)) * vae.config.scaling_factor
            e = torch.stack([x["embeds"] for x in entries])
            c = [torch.stack([x["c0"] for x in entries]).float() / 255.0] if name == "csc" else None
            return training_step(method, base, StepBatch(lat, e, None, c), opt, sched, gens(i),
                                 max_grad_norm=1.0, params=params)

        times = {"uncached": [], "cached": []}
        for i in range(a.steps + 1):  # the first of each is warm-up
            for label, fn in (("uncached", uncached), ("cached", cached)) if i % 2 == 0 else (
                    ("cached", cached), ("uncached", uncached)):
                w0, c0 = time.perf_counter(), time.process_time()
                fn(i)
                w, c = time.perf_counter() - w0, time.process_time() - c0
                if i:
                    times[label].append((w, c))
                print(f"{name} step {i} {label}: {w:.2f} s wall, {c:.2f} s CPU", flush=True)
        med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in times.items()}
        results[name] = {
            "uncached_wall_s": med["uncached"][0], "cached_wall_s": med["cached"][0],
            "uncached_cpu_s": med["uncached"][1], "cached_cpu_s": med["cached"][1],
            "wall_ratio": med["cached"][0] / med["uncached"][0], "cpu_ratio": med["cached"][1] / med["uncached"][1],
            "trainable_params": sum(p.numel() for p in params), "raw": times,
        }
        print(name, json.dumps({k: round(v, 3) for k, v in results[name].items() if k != "raw"}), flush=True)
        del method, base, params, opt
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    report = {"resolution": R, "batch": B, "steps": a.steps, "threads": a.threads, "cpu": cpu,
              "torch": torch.__version__, "results": results}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: {kk: round(vv, 3) for kk, vv in v.items() if kk != "raw"} for k, v in results.items()}))


if __name__ == "__main__":
    main()
