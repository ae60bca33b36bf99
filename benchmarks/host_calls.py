"""Host work per denoising step, counted: Python calls and ATen kernels of one U-Net call, per variant.

At batch 1 a GPU waits on the host (`results/h200-b32/sampling-run2.json`: 28.8 ms a step, CPU time equal
to wall time), so what SC- and CSC-Tuners cost there is the host's work they add. Timing that on a shared
2-core machine spreads by more than the tuners' share; counts do not. This runs SD 1.5's U-Net structure
(every block, layer and skip) at `bench_skip_edit.py`'s tiny widths, so the arithmetic is negligible, at CFG batch 2, with the
skip edit stacked as on a GPU, and counts per step the Python function calls (`cProfile`, builtins
included) and the ATen kernels (`metrics.dispatch.OpCounter`, views apart).

Usage: `PYTHONPATH=src python benchmarks/host_calls.py --out results/host-calls-sd15.json`
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats

import torch
from bench_skip_edit import tiny_unet

from scedit_cli.bench.sampling import set_up_variant, variant_tuners
from scedit_cli.metrics.dispatch import OpCounter
from scedit_cli.models import BaseModel
from scedit_cli.tuners import CSCTuner, attach, detach

VARIANTS = ("plain", "sc", "csc1", "csc2")


def count(unet, steps: int) -> tuple[int, int]:
    """(Python calls, kernels) per U-Net call, averaged over `steps` calls after two warm-up calls."""
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        for t in (999, 998):
            unet(x, t, encoder_hidden_states=emb)
        profile = cProfile.Profile()
        profile.enable()
        for t in range(steps):
            unet(x, 500 - t, encoder_hidden_states=emb)
        profile.disable()
        with OpCounter() as ops:
            unet(x, 400, encoder_hidden_states=emb)
    return pstats.Stats(profile).total_calls // steps, ops.kernels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sd15", choices=["sd15", "sd21"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    unet = tiny_unet(a.arch, device="cpu").eval()
    base = BaseModel.from_unet(unet, is_sdxl=False, vae_scale_factor=8)
    rows = []
    for i, variant in enumerate(VARIANTS):
        editor = None
        if variant != "plain":
            tuners, weights = variant_tuners(set_up_variant(variant, base, hint_kernel=3), torch.float32, seed=i)
            editor = attach(unet, tuners, weights)
            editor.stack_skips = True  # as on a GPU
            with torch.no_grad():
                for t in tuners:
                    if isinstance(t, CSCTuner):
                        t.set_condition(torch.rand(1, t.config.in_channels, 64, 64))
        calls, kernels = count(unet, a.steps)
        if editor is not None:
            detach(unet)
        rows.append({"variant": variant, "python_calls": calls, "kernels": kernels})
    plain = rows[0]
    for r in rows:
        r["python_calls_pct"] = round(100 * (r["python_calls"] / plain["python_calls"] - 1), 1)
        r["kernels_pct"] = round(100 * (r["kernels"] / plain["kernels"] - 1), 1)
        print(json.dumps(r))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"arch": f"{a.arch} (tiny widths)", "batch": 2, "latent": 8, "stacked": True, "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
