"""Each convolution of a real-size U-Net on PyTorch's stock CPU path against `scedit_cli.prepack`'s
reordered frozen weights: forward and input-gradient time per layer, and the weight / output ratio
that `prepack.MIN_WEIGHT_RATIO` draws its line on; also every linear layer's forward, stock against a
weight reordered for oneDNN (which `prepack` does not do: see benchmarks/README.md).

The U-Net (random weights) runs once to record every convolution's real input; then each layer is timed
on that input, alternating stock and reordered (`--repeat` calls each, after one untimed call), forward
and the input gradient (the stock `conv2d_input` against the transposed-weight convolution; stride-1
layers only, as in training). Reordering itself is not timed: it happens once per layer and shape.

Usage (from the repository root):
    PYTHONPATH=src python benchmarks/bench_prepack.py --out benchmarks/results/prepack-cpu-256
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path


def _time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(arch: str, resolution: int, batch: int, threads: int, repeat: int) -> dict:
    import torch
    from torch import nn

    from scedit_cli.architectures import build_unet
    from scedit_cli.bench.runner import random_unet_inputs
    from scedit_cli.bench.specs import BenchSettings
    from scedit_cli.prepack import (conv_on_reordered, input_grad_padding, reorder_for_forward,
                                    reorder_for_input_grad)

    torch.set_num_threads(threads)
    unet = build_unet(arch, "cpu", seed=0).requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    sample, ehs, added = random_unet_inputs(unet, BenchSettings(arch=arch, batch=batch, resolution=resolution), 8,
                                            arch == "sdxl", g, torch.device("cpu"))
    kwargs = {"sample": sample, "timestep": torch.tensor([500] * batch), "encoder_hidden_states": ehs,
              "added_cond_kwargs": added}
    seen, linears = [], []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.append((n, m, i[0].detach().clone(), o.shape)))
             for n, m in unet.named_modules() if type(m) is nn.Conv2d]
    hooks += [m.register_forward_hook(lambda m, i, o, n=n: linears.append((n, m, i[0].detach().clone())))
              for n, m in unet.named_modules() if type(m) is nn.Linear]
    with torch.no_grad():
        unet(**kwargs)
    for h in hooks:
        h.remove()
    # Linear layers are not reordered by `prepack` (MKL's GEMM packs as it goes); timed for comparison.
    linear_rows = []
    for name, m, x in linears:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        pw = torch.ops.mkldnn._reorder_linear_weight(m.weight, x2.shape[0])
        linear_rows.append({"layer": name, "weight": list(m.weight.shape), "rows": x2.shape[0],
                            "forward_stock_ms": 1e3 * _time(lambda: torch.nn.functional.linear(x2, m.weight, m.bias),
                                                            repeat),
                            "forward_packed_ms": 1e3 * _time(lambda: torch.ops.mkldnn._linear_pointwise(
                                x2, pw, m.bias, "none", [], ""), repeat)})
    rows = []
    for name, m, x, out_shape in seen:
        w = m.weight
        pw = reorder_for_forward(m, x.shape)
        row = {"layer": name, "weight": list(w.shape), "input": list(x.shape),
               "weight_per_output": w.numel() / out_shape.numel(),
               "forward_stock_ms": 1e3 * _time(lambda: m._conv_forward(x, w, m.bias), repeat),
               "forward_packed_ms": 1e3 * _time(lambda: conv_on_reordered(
                   x, pw, m.bias, list(m.padding), list(m.stride), list(m.dilation)), repeat)}
        if m.stride == (1, 1) and m.dilation == (1, 1):
            grad = torch.randn(out_shape, generator=g)
            pt = reorder_for_input_grad(m, grad.shape)
            row["input_grad_stock_ms"] = 1e3 * _time(
                lambda: torch.nn.grad.conv2d_input(x.shape, w, grad, m.stride, m.padding), repeat)
            row["input_grad_packed_ms"] = 1e3 * _time(
                lambda: conv_on_reordered(grad, pt, None, input_grad_padding(m), [1, 1], [1, 1]), repeat)
        rows.append(row)
    return {"rows": rows, "linear_rows": linear_rows}


def summarize(rows: list[dict], ratio: float) -> dict:
    """Totals over all layers and over the layers at or above `ratio` (the ones `prepack` packs)."""
    out = {}
    for label, sel in (("all", rows), (f"ratio>={ratio:g}", [r for r in rows if r["weight_per_output"] >= ratio])):
        out[label] = {"layers": len(sel)}
        for k in ("forward_stock_ms", "forward_packed_ms", "input_grad_stock_ms", "input_grad_packed_ms"):
            out[label][k] = sum(r.get(k, 0.0) for r in sel)
    return out


def main(argv=None) -> None:
    from scedit_cli.bench.runner import machine_info
    from scedit_cli.prepack import MIN_WEIGHT_RATIO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="sd15", choices=["sd15", "sd21", "sdxl"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", help="write OUT.json")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    result = measure(a.arch, a.resolution, a.batch, a.threads, a.repeat)
    result.update(command=shlex.join([Path(sys.executable).name, *sys.argv]), settings=vars(a),
                  machine=machine_info("cpu"), load_average_1min=os.getloadavg()[0],
                  totals=summarize(result["rows"], MIN_WEIGHT_RATIO), seconds=time.perf_counter() - t0)
    for r in result["rows"]:
        print(f"{r['layer']:45s} w/out {r['weight_per_output']:7.1f}  forward {r['forward_stock_ms']:7.1f} -> "
              f"{r['forward_packed_ms']:6.1f} ms" + (f"  input grad {r['input_grad_stock_ms']:7.1f} -> "
                                                     f"{r['input_grad_packed_ms']:6.1f} ms"
                                                     if "input_grad_stock_ms" in r else ""))
    lin = result["linear_rows"]
    print(f"linear layers (not reordered by scedit): {len(lin)}, forward "
          f"{sum(r['forward_stock_ms'] for r in lin):.0f} -> {sum(r['forward_packed_ms'] for r in lin):.0f} ms")
    for label, t in result["totals"].items():
        print(f"{label}: {t['layers']} layers, forward {t['forward_stock_ms']:.0f} -> {t['forward_packed_ms']:.0f} ms,"
              f" input grad {t['input_grad_stock_ms']:.0f} -> {t['input_grad_packed_ms']:.0f} ms")
    if a.out:
        out = Path(a.out).with_suffix(".json")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
