"""Memory of one frozen transformer feed-forward, forward and backward, each way `scedit_cli.lean` can run it.

SD 1.5's 64x64 feed-forwards (`up_blocks.3`, C = 320, 4096 tokens) are where SCEdit's training peak falls
at 512 px (`peak_probe.py`). This runs one such feed-forward (random weights, frozen, input requiring
grad) at the given batch and counts, with `metrics.memory.TensorPeak`, the bytes of the tensors it makes:
the forward's peak, what is left after it (kept for backward, and the output), and the backward's peak
(the gradient of the output made outside). Ways:

- `stock`: diffusers' layers under stock autograd;
- `geglu`: `lean_autograd` with the GEGLU alone lean (it keeps its projection only; the two linears
  stock): what a feed-forward whose linears carry adapters (LoRA's) runs;
- `fused`: the frozen feed-forward as one function (the same kept projection, the product and the
  gradients one batch slice at a time);
- `fused-recompute`: the same keeping only the input (`train.recompute_feed_forward`);
- `lora`: LoRA r=64 on both linears (as Table 1's LoRA row: `methods.lora`, peft), then `lean_autograd`:
  its adapters train, so it takes the lean GEGLU path.

Usage: `PYTHONPATH=src python benchmarks/bench_feed_forward.py --batch 32 --out results/ff-cpu-b32.json`.
Figures are in the chosen dtype (fp32 on a CPU; fp16 halves every byte figure).
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import torch
from diffusers.models.attention import FeedForward

import scedit_cli.lean as lean
from scedit_cli.bench.runner import machine_info
from scedit_cli.metrics.memory import TensorPeak

WAYS = ("stock", "geglu", "fused", "fused-recompute", "lora")


def run(way: str, batch: int, tokens: int, channels: int, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    ff = FeedForward(channels, activation_fn="geglu").to(dtype).requires_grad_(False)
    if way == "lora":
        from scedit_cli.methods.lora import LoRAConfig, inject_lora

        inject_lora(ff, LoRAConfig(rank=64, targets=["net.0.proj", "net.2"]))
        ff.to(dtype)
        lean.lean_autograd(ff)
    elif way == "geglu":
        with mock.patch.object(lean, "frozen_geglu_linears", lambda module: None):
            lean.lean_autograd(ff)
    elif way != "stock":
        lean.lean_autograd(ff, recompute_feed_forward=way == "fused-recompute")
    x = torch.randn(batch, tokens, channels, dtype=dtype).requires_grad_()
    grad = torch.randn(batch, tokens, channels, dtype=dtype)
    t0 = time.perf_counter()
    with TensorPeak() as t:
        y = ff(x)
        forward_peak, after_forward = t.peak, t.live
        t.peak = t.live
        y.backward(grad)
        backward_peak = t.peak
    seconds = time.perf_counter() - t0
    unit = x.numel() * x.element_size()
    return {"way": way, "forward_peak_bytes": forward_peak, "after_forward_bytes": after_forward,
            "backward_peak_bytes": backward_peak, "input_bytes": unit, "seconds": round(seconds, 3),
            "forward_peak_x_input": round(forward_peak / unit, 2),
            "after_forward_x_input": round(after_forward / unit, 2),
            "backward_peak_x_input": round(backward_peak / unit, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=4096, help="64x64 latent at 512 px")
    ap.add_argument("--channels", type=int, default=320)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    rows = []
    for way in WAYS:
        row = run(way, a.batch, a.tokens, a.channels, dtype)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"batch": a.batch, "tokens": a.tokens, "channels": a.channels, "dtype": a.dtype,
              "slice_elements": lean.BACKWARD_SLICE_ELEMENTS, "torch_threads": torch.get_num_threads(),
              "machine": machine_info("cpu"), "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
