"""Training-memory accounting and step timing on a tiny SD-1.5-shaped U-Net, through the real methods
and the training loop's own step."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from scedit_cli.methods import build_method
from scedit_cli.metrics.memory import (
    ENCODER_REGIONS,
    SavedTensorCounter,
    TensorPeak,
    measure_step_memory,
    optimizer_state_nbytes,
    release_memory,
    settled_heap,
    unet_regions,
)
from scedit_cli.metrics.timing import time_steps
from scedit_cli.models import BaseModel
from scedit_cli.training import StepBatch, make_noise_scheduler, training_step
from tiny_models import make_tiny_unet


def _setup(name, config):
    unet = make_tiny_unet("sd15")
    base = BaseModel.from_unet(unet)
    method = build_method(name, config)
    method.setup(base)
    method.train(True)
    params = method.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = StepBatch(torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, 32, generator=g))
    sched = make_noise_scheduler(base)

    def step():
        training_step(method, base, batch, opt, sched, torch.Generator().manual_seed(1))

    return unet, method, params, opt, step


def _measure(name, config):
    unet, method, params, opt, step = _setup(name, config)
    step()  # warm-up: creates the optimizer state
    extra = [m for m in method.extra_modules() if m is not unet]
    report = measure_step_memory(step, modules=[unet, *extra], trainable=params, optimizer=opt, device="cpu",
                                 regions=unet_regions(unet))
    return report, params


def test_sc_lora_full_ordering_and_no_encoder_activations():
    with settled_heap():  # as `scedit bench` measures its rows
        full, full_params = _measure("full", {})
        lora, _ = _measure("lora", {"rank": 4})
        sc, sc_params = _measure("sc", {})
    assert sc.accounted_bytes < lora.accounted_bytes < full.accounted_bytes
    # SCEdit: nothing upstream of the skips is kept for backward; LoRA and Full keep the encoder's activations.
    assert sc.saved_upstream_bytes() == 0
    assert all(sc.saved_by_region.get(r, 0) == 0 for r in ENCODER_REGIONS)
    assert sc.saved_by_region["up_blocks"] > 0
    assert lora.saved_by_region["down_blocks"] > 0 and full.saved_by_region["down_blocks"] > 0
    # Gradients and AdamW state follow the trainable parameters (2 fp32 moments each).
    n = sum(p.numel() for p in sc_params)
    assert sc.trainable_params == n and sc.grads_bytes == 4 * n
    assert 8 * n <= sc.optimizer_bytes <= 8 * n + 64 * len(sc_params)
    assert full.trainable_params == sum(p.numel() for p in full_params) == full.params_bytes // 4
    assert full.peak_rss_bytes and full.peak_rss_bytes > full.params_bytes
    # The tensors' peak: what is at rest, plus at least everything kept for backward at once (the end of the
    # forward), plus the temporaries; the figure the methods are compared by off CUDA.
    for r in (full, lora, sc):
        at_rest = r.params_bytes + r.buffers_bytes + r.optimizer_bytes
        assert r.tensor_peak_bytes > at_rest + r.saved_bytes and r.peak_bytes == r.tensor_peak_bytes
    assert sc.tensor_peak_bytes < lora.tensor_peak_bytes < full.tensor_peak_bytes


def test_saved_tensor_counter_counts_each_storage_once_and_skips_parameters():
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16, requires_grad=True)
    with SavedTensorCounter({"lin": lin}, exclude=list(lin.parameters())) as c:
        y = lin(x)
        (y * y).sum().backward()
    # Linear saves x (its weight is a parameter: excluded); y * y saves y once although it appears twice.
    assert c.by_region["lin"] == x.numel() * 4
    assert c.by_region["(outside)"] == y.numel() * 4
    assert c.total == (x.numel() + y.numel()) * 4


def test_tensor_peak_counts_new_storages_until_freed():
    before = torch.randn(100, 100)
    with TensorPeak() as t:
        a = torch.randn(1000, 1000)  # 4 MB
        b = a * 2  # 4 MB more: the peak
        view, same = b.view(-1), b.add_(1)  # a view and an in-place result: nothing new
        del a
        parts = torch._foreach_add([before, before], 1.0)  # two new tensors from one list return
        assert t.live == 4_000_000 + 2 * 40_000 and t.peak == 8_000_000
        del b, view, same, parts
        assert t.live == 0 and t.peak == 8_000_000


def test_optimizer_state_bytes_after_a_step():
    p = torch.nn.Parameter(torch.randn(10, 10))
    opt = torch.optim.AdamW([p])
    assert optimizer_state_nbytes(opt) == 0
    p.grad = torch.ones_like(p)
    opt.step()
    assert optimizer_state_nbytes(opt) >= 2 * 100 * 4


def test_time_steps_median_after_warmup():
    calls = []
    t = time_steps(lambda: calls.append(1), steps=5, warmup=2)
    assert len(calls) == 7 and t.steps == 5 and len(t.times_s) == 5
    assert t.min_s <= t.median_s <= t.max_s
    from scedit_cli.errors import SceditError

    with pytest.raises(SceditError, match="--steps"):
        time_steps(lambda: None, steps=0)


def test_settled_heap_sets_the_old_heap_aside_and_still_frees_new_cycles():
    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    assert gc.get_freeze_count() == 0
    with settled_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0  # what was alive before is out of the collections inside
        made = cycle()
        # Nested: the outer block keeps the freezing (no second freeze taking in the new cycle, no thaw).
        # Frozen objects can still die by reference counting meanwhile, so the count may only fall.
        with settled_heap():
            assert 0 < gc.get_freeze_count() <= frozen
        assert 0 < gc.get_freeze_count() <= frozen
        release_memory()
        assert made() is None  # a cycle made inside the block is still collected
    assert gc.get_freeze_count() == 0


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
def test_tensor_peak_counts_opaque_onednn_tensors():
    """A step that reorders a frozen convolution's weight (`prepack`, first call at a shape) makes a oneDNN
    tensor, which has no storage: counted by its elements until it is freed."""
    w = torch.randn(8, 4, 3, 3)
    with TensorPeak() as t:
        packed = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, [1, 4, 16, 16])
        assert packed.is_mkldnn and t.live == t.peak == w.numel() * 4
        del packed
        assert t.live == 0
