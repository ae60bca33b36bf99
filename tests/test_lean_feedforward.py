"""Frozen transformer feed-forwards as one function: the stock values and input gradients, the projection
(or, recomputing, the input) kept, and no whole-batch product or projection gradient made when sliced."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention import FeedForward

import scedit_cli.lean.common as lean_common
from scedit_cli.lean import lean_autograd, restore_autograd
from scedit_cli.lean.feedforward import _FrozenFeedForward, frozen_geglu_linears
from scedit_cli.metrics.memory import TensorPeak

DIM, BATCH, TOKENS = 8, 4, 5


def _feed_forward(frozen: bool = True) -> FeedForward:
    torch.manual_seed(0)
    ff = FeedForward(DIM, activation_fn="geglu")
    with torch.no_grad():
        for p in ff.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return ff.requires_grad_(not frozen)


def _step(ff, x, weight):
    x = x.clone().requires_grad_()
    out = ff(x)
    (out * weight).sum().backward()
    return out.detach(), x.grad


class _Sizes(TensorPeak):
    """The bytes of each storage the operators inside make (views and in-place results are not new)."""

    def __init__(self):
        super().__init__()
        self.made_bytes: list[int] = []

    def made(self, owner, nbytes, func) -> None:
        super().made(owner, nbytes, func)
        self.made_bytes.append(nbytes)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("sliced", [False, True])
def test_frozen_feed_forward_matches_stock(monkeypatch, recompute, sliced):
    g = torch.Generator().manual_seed(1)
    x, weight = torch.randn(BATCH, TOKENS, DIM, generator=g), torch.randn(BATCH, TOKENS, DIM, generator=g)
    stock = _feed_forward()
    ref_out, ref_grad = _step(stock, x, weight)
    lean = copy.deepcopy(stock)
    counts = lean_autograd(lean, recompute_feed_forward=recompute)
    assert counts["frozen_ff"] == 1 and counts["geglu"] == 1
    if sliced:  # one sample's 8C projection per slice: 4 slices
        monkeypatch.setattr(lean_common, "BACKWARD_SLICE_ELEMENTS", TOKENS * 8 * DIM)
    out, grad = _step(lean, x, weight)
    if sliced:
        torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(lean(x), stock(x))
    restore_autograd(lean)
    assert "forward" not in lean.__dict__


@pytest.mark.parametrize("recompute", [False, True])
def test_frozen_feed_forward_gradcheck(monkeypatch, recompute):
    monkeypatch.setattr(lean_common, "BACKWARD_SLICE_ELEMENTS", 3 * 8 * DIM)  # slices of 1 and 2 rows
    g = torch.Generator().manual_seed(2)
    w1, b1 = torch.randn(8 * DIM, DIM, generator=g, dtype=torch.float64), torch.randn(8 * DIM, generator=g,
                                                                                   dtype=torch.float64)
    w2, b2 = torch.randn(DIM, 4 * DIM, generator=g, dtype=torch.float64), torch.randn(DIM, generator=g,
                                                                                   dtype=torch.float64)
    x = torch.randn(5, 3, DIM, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _FrozenFeedForward.apply(x, w1, b1, w2, b2, recompute), (x,))


@pytest.mark.parametrize("recompute", [False, True])
def test_frozen_feed_forward_keeps_the_projection_or_the_input(recompute):
    lean = _feed_forward()
    lean_autograd(lean, recompute_feed_forward=recompute)
    kept = []

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            kept.append(t.numel())
        return t

    x = torch.randn(BATCH, TOKENS, DIM, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lean(x)
    assert kept == [BATCH * TOKENS * (DIM if recompute else 8 * DIM)]


@pytest.mark.parametrize("recompute", [False, True])
def test_sliced_frozen_feed_forward_never_makes_the_whole_product(monkeypatch, recompute):
    """The 4C product and its gradient, and the 8C projection's gradient, exist one slice at a time; stock
    autograd makes each for the whole batch (the check fails there)."""
    product = BATCH * TOKENS * 4 * DIM * 4  # bytes in fp32
    monkeypatch.setattr(lean_common, "BACKWARD_SLICE_ELEMENTS", TOKENS * 8 * DIM)
    x, weight = torch.randn(BATCH, TOKENS, DIM), torch.randn(BATCH, TOKENS, DIM)

    def whole_batch_tensors(ff):
        with _Sizes() as sizes:
            _step(ff, x, weight)
        return sum(n >= product for n in sizes.made_bytes)

    lean = _feed_forward()
    lean_autograd(lean, recompute_feed_forward=recompute)
    assert whole_batch_tensors(lean) == (0 if recompute else 1)  # the kept projection itself
    assert whole_batch_tensors(_feed_forward()) >= 4


def test_trainable_feed_forward_takes_the_geglu_path():
    """Full fine-tuning (or linears that carry adapters): the stock layers with the lean GEGLU, weight
    gradients as stock autograd's."""
    g = torch.Generator().manual_seed(3)
    x, weight = torch.randn(BATCH, TOKENS, DIM, generator=g), torch.randn(BATCH, TOKENS, DIM, generator=g)
    stock = _feed_forward(frozen=False)
    lean = copy.deepcopy(stock)
    assert lean_autograd(lean)["frozen_ff"] == 1  # patched: it decides per call
    _step(stock, x, weight)
    _step(lean, x, weight)
    for a, b in zip(stock.parameters(), lean.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_an_adapter_injected_after_patching_runs_as_itself():
    """A frozen adapter that replaced a linear after `lean_autograd` (peft injects such layers) is called,
    not bypassed for the base weight."""

    class Shifted(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    stock = _feed_forward()
    lean = copy.deepcopy(stock)
    lean_autograd(lean)
    for ff in (stock, lean):
        shifted = Shifted(DIM, 8 * DIM).requires_grad_(False)
        shifted.load_state_dict(ff.net[0].proj.state_dict())
        ff.net[0].proj = shifted
    x, weight = torch.randn(BATCH, TOKENS, DIM), torch.randn(BATCH, TOKENS, DIM)
    assert torch.equal(_step(lean, x, weight)[0], _step(stock, x, weight)[0])


def test_only_geglu_feed_forwards_with_plain_linears_are_fused():
    assert frozen_geglu_linears(_feed_forward()) is not None
    assert frozen_geglu_linears(FeedForward(DIM, activation_fn="gelu")) is None
    assert frozen_geglu_linears(FeedForward(DIM, activation_fn="geglu", dropout=0.1)) is None
    assert frozen_geglu_linears(torch.nn.Linear(2, 2)) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the fp16-autocast path")
def test_frozen_feed_forward_under_cuda_fp16_autocast():
    g = torch.Generator().manual_seed(4)
    x, weight = torch.randn(BATCH, TOKENS, DIM, generator=g).cuda(), torch.randn(BATCH, TOKENS, DIM, generator=g).cuda()
    stock = _feed_forward().cuda()
    lean = copy.deepcopy(stock)
    lean_autograd(lean)
    with torch.autocast("cuda", dtype=torch.float16):
        ref_out, ref_grad = _step(stock, x, weight)
        out, grad = _step(lean, x, weight)
    assert out.dtype == ref_out.dtype == torch.float16
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-4)
