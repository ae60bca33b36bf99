"""Where in a training step the CUDA memory peak falls, per method (a diagnostic for Table 1).

For each method it runs warm-up steps, then one step with hooks on the U-Net's blocks that read the
allocator's counters at every block boundary, forward and backward. Each interval between two
boundaries reports the bytes allocated when it began and the peak inside it, so the printout shows
what is held at the peak (allocated) and what the block adds on top (its transient).

Usage (real-size SD 1.5, random weights, on a GPU):
    python benchmarks/peak_probe.py --methods "SCEdit,LoRA r=64" --batch 32 --out probe.json
"""

from __future__ import annotations

import argparse
import json

import torch
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.resnet import ResnetBlock2D, Upsample2D

from scedit_cli.bench.runner import BaseFactory, select_methods, setup_method
from scedit_cli.bench.specs import TABLES, BenchSettings
from scedit_cli.metrics.memory import release_memory

WATCHED = (ResnetBlock2D, BasicTransformerBlock, FeedForward, Upsample2D)
GIB = 2**30


def probe(run, device) -> dict:
    events: list[tuple[str, int, int]] = []  # (boundary name, allocated at it, peak since the previous one)

    def mark(name):
        events.append((name, torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)))
        torch.cuda.reset_peak_memory_stats(device)

    handles = []
    for name, m in run.base.unet.named_modules():
        if isinstance(m, WATCHED) or name in ("conv_norm_out", "conv_out"):
            handles.append(m.register_forward_pre_hook(lambda m, a, n=name: mark(f"fwd> {n}")))
            handles.append(m.register_forward_hook(lambda m, a, o, n=name: mark(f"fwd< {n}")))
            handles.append(m.register_full_backward_pre_hook(lambda m, g, n=name: mark(f"bwd> {n}")))
            handles.append(m.register_full_backward_hook(lambda m, gi, go, n=name: mark(f"bwd< {n}")))
    release_memory()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    mark("step start")
    run.step()
    mark("step end")
    torch.cuda.synchronize(device)
    for h in handles:
        h.remove()
    # Interval i runs from boundary i-1 to boundary i; its peak is read at boundary i.
    intervals = [{"from": events[i - 1][0], "to": events[i][0], "allocated_at_start_gib": events[i - 1][1] / GIB,
                  "peak_gib": events[i][2] / GIB, "transient_gib": (events[i][2] - events[i - 1][1]) / GIB}
                 for i in range(1, len(events))]
    top = sorted(intervals, key=lambda r: -r["peak_gib"])[:12]
    fwd_end = max((e for e in events if e[0].startswith("fwd<")), key=lambda e: e[1], default=None)
    return {"peak_gib": max(r["peak_gib"] for r in intervals), "top_intervals": top,
            "max_allocated_at_a_boundary_gib": max(e[1] for e in events) / GIB,
            "forward_end": fwd_end and {"at": fwd_end[0], "allocated_gib": fwd_end[1] / GIB},
            "boundaries": len(events)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="table1")
    ap.add_argument("--methods", default="SCEdit,LoRA r=64")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    s = BenchSettings(device=a.device, batch=a.batch, resolution=a.resolution, steps=1, warmup=a.warmup)
    table = TABLES[a.table]
    factory = BaseFactory(table.arch, s)
    results = {}
    asked = [m.strip() for m in a.methods.split(",")]
    for spec in [m for m in select_methods(table, asked) if m.label in asked]:
        try:
            run = setup_method(spec, factory, s)
            for _ in range(a.warmup):
                run.step()
            results[spec.label] = probe(run, torch.device(a.device))
        except Exception as e:  # a diagnostic: report and go on to the next method
            results[spec.label] = {"error": f"{type(e).__name__}: {e}"}
        run = None
        release_memory()
        r = results[spec.label]
        print(spec.label, json.dumps({k: v for k, v in r.items() if k != "top_intervals"}))
        for row in r.get("top_intervals", [])[:6]:
            print(f"   peak {row['peak_gib']:.2f} GiB held {row['allocated_at_start_gib']:.2f} "
                  f"(+{row['transient_gib']:.2f}) {row['from']} -> {row['to']}")
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
