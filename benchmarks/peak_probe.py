"""Where in a training step the CUDA memory peak falls, per method (a diagnostic for Table 1).

For each method it runs warm-up steps, then one step with hooks on the U-Net's blocks that read the
allocator's counters at every block boundary, forward and backward. Each interval between two
boundaries reports the bytes allocated when it began and the peak inside it, so the printout shows
what is held at the peak (allocated) and what the block adds on top (its transient).

It also takes apart what is held when the U-Net's forward ends (`forward_end`, any device): the bytes of
the tensors the step's forward made that are still alive (counted as `metrics.memory.TensorPeak` does),
how many of them autograd saved for backward (by dtype, and by the operator and U-Net block that made
them: under autocast, what is kept in fp32 shows), and the others by operator and block; on CUDA beside
`memory_allocated`, whose excess over what is at rest and those tensors is memory no operator made
(library workspaces, the allocator).

Usage (real-size SD 1.5, random weights, on a GPU):
    python benchmarks/peak_probe.py --methods "SCEdit,LoRA r=64" --batch 32 --out probe.json
On a CPU (`--device cpu`; `--precision bf16` for CPU autocast) the counters are `TensorPeak`'s, which count
what `memory_allocated` would, plus what is at rest (parameters, gradients, optimizer state) when the step
starts. A method that fails is reported in the JSON and the exit code is 1.
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys
import weakref

import torch
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.resnet import ResnetBlock2D, Upsample2D

from scedit_cli.bench.runner import BaseFactory, machine_info, setup_method
from scedit_cli.bench.specs import select_methods
from scedit_cli.bench.specs import TABLES, BenchSettings
from scedit_cli.fsutil import write_json_atomic
from scedit_cli.metrics.memory import (TensorPeak, optimizer_state_nbytes, release_memory, storage_owner,
                                       tensors_nbytes)

WATCHED = (ResnetBlock2D, BasicTransformerBlock, FeedForward, Upsample2D)
GIB = 2**30


class _CudaCounters:
    """The CUDA caching allocator's own counters."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)

    def read_and_reset_peak(self) -> tuple[int, int]:
        read = torch.cuda.memory_allocated(self.device), torch.cuda.max_memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return read


class _TensorCounters(TensorPeak):
    """The same readings on any device: what was at rest when the step began plus `TensorPeak`'s count."""

    def __init__(self, at_rest: int):
        super().__init__()
        self.at_rest = at_rest

    def read_and_reset_peak(self) -> tuple[int, int]:
        read = self.at_rest + self.live, self.at_rest + self.peak
        self.peak = self.live
        return read


def _at_rest(run) -> int:
    """Bytes of the parameters, their gradients (if any) and the optimizer state."""
    params = [*run.base.unet.parameters(), *run.params]
    grads = [p.grad for p in params if p.grad is not None]
    return tensors_nbytes([*params, *grads]) + optimizer_state_nbytes(run.optimizer)


def probe(run, device) -> dict:
    events: list[tuple[str, int, int]] = []  # (boundary name, allocated at it, peak since the previous one)
    release_memory()
    counters = _CudaCounters(device) if device.type == "cuda" else _TensorCounters(_at_rest(run))

    def mark(name):
        events.append((name, *counters.read_and_reset_peak()))

    handles = []
    for name, m in run.base.unet.named_modules():
        if isinstance(m, WATCHED) or name in ("conv_norm_out", "conv_out"):
            handles.append(m.register_forward_pre_hook(lambda m, a, n=name: mark(f"fwd> {n}")))
            handles.append(m.register_forward_hook(lambda m, a, o, n=name: mark(f"fwd< {n}")))
            handles.append(m.register_full_backward_pre_hook(lambda m, g, n=name: mark(f"bwd> {n}")))
            handles.append(m.register_full_backward_hook(lambda m, gi, go, n=name: mark(f"bwd< {n}")))
    try:
        with counters:
            mark("step start")
            run.step()
            mark("step end")
    finally:
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
            "forward_end_boundary": fwd_end and {"at": fwd_end[0], "allocated_gib": fwd_end[1] / GIB},
            "boundaries": len(events)}


class _MadeTensors(TensorPeak):
    """`TensorPeak` that also keeps, for each storage made and still alive, (bytes, operator, U-Net block)."""

    def __init__(self, where: list[str]):
        super().__init__()
        self.where = where
        self.alive: dict[int, tuple[int, str, str]] = {}

    def made(self, owner, nbytes, func) -> None:
        super().made(owner, nbytes, func)
        self.alive[id(owner)] = (nbytes, str(func), self.where[-1] if self.where else "-")
        weakref.finalize(owner, self.alive.pop, id(owner), None)


def forward_end(run, device) -> dict:
    """What is held when the U-Net's forward ends, during one training step (see the module docstring)."""
    where: list[str] = []
    handles = []
    for name, m in run.base.unet.named_modules():
        if name.count(".") <= 1 and name:  # "up_blocks.3" and the like
            handles.append(m.register_forward_pre_hook(lambda m, a, n=name: where.append(n)))
            handles.append(m.register_forward_hook(lambda m, a, o: where.pop() and None))  # None: keep the output
    saved: dict[int, str] = {}  # storage id -> the dtype autograd saved it in
    found: dict = {}
    made = _MadeTensors(where)

    def at_end(module, args, output):
        at_rest = _at_rest(run)  # no gradients at the forward's end: the last step set them to None
        alive = dict(made.alive)
        others, kept, kept_dtype = collections.Counter(), collections.Counter(), collections.Counter()
        for key, (n, op, block) in alive.items():
            if key not in saved:
                others[f"{op} in {block}"] += n
            else:
                kept[f"{op} {saved[key]} in {block}"] += n
                kept_dtype[saved[key]] += n
        found.update({"made_alive_gib": sum(v[0] for v in alive.values()) / GIB,
                      "saved_gib": sum(v[0] for k, v in alive.items() if k in saved) / GIB,
                      "parameters_and_optimizer_gib": at_rest / GIB,
                      "saved_by_dtype_gib": {k: v / GIB for k, v in kept_dtype.most_common()},
                      "saved_top": {k: v / GIB for k, v in kept.most_common(16)},
                      "not_saved_top": {k: v / GIB for k, v in others.most_common(12)}})
        if device.type == "cuda":
            found["cuda_allocated_gib"] = torch.cuda.memory_allocated(device) / GIB

    def pack(t):
        saved[id(storage_owner(t))] = str(t.dtype).removeprefix("torch.")  # the key `_MadeTensors` uses
        return t

    handles.append(run.base.unet.register_forward_hook(at_end))
    try:
        with made, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run.step()
    finally:
        for h in handles:
            h.remove()
    return found


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default="table1")
    ap.add_argument("--methods", default="SCEdit,LoRA r=64")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--unet-config", default=None, help="a diffusers U-Net config.json instead of the table's")
    ap.add_argument("--out", required=True, help="the JSON file to write")
    a = ap.parse_args(argv)
    s = BenchSettings(device=a.device, batch=a.batch, resolution=a.resolution, steps=1, warmup=a.warmup,
                      precision=a.precision, unet_config=a.unet_config)
    table = TABLES[a.table]
    factory = BaseFactory(table.arch, s)
    device = torch.device(a.device)
    results = {}
    asked = [m.strip() for m in a.methods.split(",")]
    for spec in [m for m in select_methods(table, asked) if m.label in asked]:
        run = None
        try:
            run = setup_method(spec, factory, s)
            for _ in range(a.warmup):
                run.step()
            results[spec.label] = probe(run, device)
            results[spec.label]["forward_end"] = forward_end(run, device)
        except Exception as e:  # a diagnostic: report, go on to the next method, exit 1 at the end
            results[spec.label] = {"error": f"{type(e).__name__}: {e}"}
        run = None
        release_memory()
        r = results[spec.label]
        print(spec.label, json.dumps({k: v for k, v in r.items() if k != "top_intervals"}, indent=1))
        for row in r.get("top_intervals", [])[:6]:
            print(f"   peak {row['peak_gib']:.2f} GiB held {row['allocated_at_start_gib']:.2f} "
                  f"(+{row['transient_gib']:.2f}) {row['from']} -> {row['to']}")
    argv = sys.argv[1:] if argv is None else argv
    out = {"command": shlex.join(["python", "benchmarks/peak_probe.py", *argv]), "settings": vars(a),
           "machine": machine_info(a.device), "methods": results}
    write_json_atomic(a.out, out)
    return out


if __name__ == "__main__":
    sys.exit(1 if any("error" in r for r in main()["methods"].values()) else 0)
