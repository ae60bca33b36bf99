"""Lean autograd (frozen convs, norms, fused resnet norm+SiLU, GEGLU): same values and gradients, fewer
saved bytes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU

from scedit_cli.lean import lean_autograd, resolve_lean, restore_autograd
from scedit_cli.lean.common import PATCHED
from scedit_cli.lean.feedforward import _GegluProduct
from scedit_cli.lean.norms import _Norm
from scedit_cli.tuners import SCTuner, SCTunerConfig, SkipLayout, attach
from tiny_models import make_tiny_unet, randomize_, unet_inputs

AUTO_ON_CPU = True  # what train.lean = "auto" means on a CPU (benchmarks/bench_peers.py measured both)


@pytest.mark.parametrize("groups,silu", [(2, False), (2, True), (0, False)])
def test_norm_function_gradcheck(groups, silu):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    shape = [3] if not groups else None
    w = torch.randn(3 if not groups else 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3 if not groups else 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _Norm.apply(x, w, b, groups, shape, 1e-5, silu, torch.float64),
                                    (x, w, b))
    ref = F.group_norm(x, groups, w, b, 1e-5) if groups else F.layer_norm(x, shape, w, b, 1e-5)
    ref = F.silu(ref) if silu else ref
    torch.testing.assert_close(_Norm.apply(x, w, b, groups, shape, 1e-5, silu, torch.float64), ref)


def test_geglu_product_gradcheck():
    h = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: _GegluProduct.apply(h, "none"), (h,))
    a, gate = h.chunk(2, dim=-1)
    torch.testing.assert_close(_GegluProduct.apply(h, "none"), a * F.gelu(gate))


def _run(lean: bool, method: str, recompute_ff: bool = False):
    unet = make_tiny_unet()
    if method == "sc":
        tuner = randomize_(SCTuner(SCTunerConfig(), SkipLayout.from_unet(unet)), scale=0.05)
        attach(unet, tuner)
        params = list(tuner.parameters())
    else:  # full fine-tuning: norms with trainable weights
        params = list(unet.parameters())
    counts = lean_autograd(unet, recompute_feed_forward=recompute_ff) if lean else None
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    unet.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = unet(**unet_inputs(unet)).sample
    out.pow(2).mean().backward()
    with torch.no_grad():
        eval_out = unet(**unet_inputs(unet)).sample
    return counts, saved, out.detach(), eval_out, [p.grad.clone() for p in params], unet


@pytest.mark.parametrize("method", ["sc", "full"])
def test_lean_autograd_same_values_and_gradients_fewer_bytes(method):
    _, plain_saved, plain_out, plain_eval, plain_grads, _ = _run(False, method)
    counts, lean_saved, lean_out, lean_eval, lean_grads, unet = _run(True, method)
    assert counts["conv"] > 10 and counts["norm_silu"] > 10 and counts["geglu"] > 2 and counts["norm"] > 20
    assert counts["frozen_ff"] == counts["geglu"]  # patched for both; used where the linears are frozen (sc)
    assert type(unet.conv_act).__name__ == "SiLUUnlessFused"  # the output head's norm+SiLU fused too
    assert torch.equal(plain_out, lean_out)
    assert torch.equal(plain_eval, lean_eval)  # no-grad path: the fused SiLU is not applied twice
    for a, b in zip(plain_grads, lean_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7 if method == "sc" else 1e-6)
    if method == "sc":
        assert lean_saved < 0.8 * plain_saved, (lean_saved, plain_saved)
    restore_autograd(unet)
    assert not any("forward" in m.__dict__ for m in unet.modules())
    assert all(type(getattr(m, "nonlinearity", torch.nn.SiLU())) is torch.nn.SiLU for m in unet.modules())
    assert type(unet.conv_act) is torch.nn.SiLU


@pytest.mark.parametrize("method", ["sc", "full"])
def test_feed_forward_recompute_same_gradients_fewer_bytes(method):
    _, lean_saved, lean_out, _, lean_grads, _ = _run(True, method)
    counts, ff_saved, ff_out, ff_eval, ff_grads, unet = _run(True, method, recompute_ff=True)
    assert counts["feed_forward"] > 2
    assert torch.equal(lean_out, ff_out)
    for a, b in zip(lean_grads, ff_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ff_saved < lean_saved
    restore_autograd(unet)
    assert not any("forward" in m.__dict__ for m in unet.modules())


def test_unfrozen_conv_still_trains_its_weight():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    stock = copy.deepcopy(conv)
    lean_autograd(conv)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    x_stock = x.detach().clone().requires_grad_(True)
    w = torch.randn(1, 4, 8, 8)  # a loss that weighs each output differently
    (conv(x) * w).sum().backward()
    (stock(x_stock) * w).sum().backward()
    # the same gradients as stock autograd, for the weight, the bias and the input
    torch.testing.assert_close(conv.weight.grad, stock.weight.grad)
    torch.testing.assert_close(conv.bias.grad, stock.bias.grad)
    torch.testing.assert_close(x.grad, x_stock.grad)


def test_lean_autograd_is_idempotent():
    unet = make_tiny_unet()
    first = lean_autograd(unet)
    assert lean_autograd(unet) == {"conv": 0, "norm": 0, "norm_silu": 0, "geglu": 0, "frozen_ff": 0,
                                   "feed_forward": 0}
    assert first["conv"] > 0


def test_standalone_geglu_module_matches():
    torch.manual_seed(0)
    m = GEGLU(4, 3)
    x = torch.randn(2, 4, requires_grad=True)
    ref = m(x)
    ref.sum().backward()
    gx, gw = x.grad.clone(), m.proj.weight.grad.clone()
    x.grad = None
    m.proj.weight.grad = None
    lean_autograd(m)
    out = m(x)
    out.sum().backward()
    assert torch.equal(out, ref)
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(m.proj.weight.grad, gw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: checks the fp16-autocast path (fp32 norms)")
def test_lean_autograd_under_cuda_fp16_autocast():
    """Under CUDA fp16 autocast the stock norms keep fp32 copies; lean keeps the fp16 input. Same results."""

    def run(lean: bool):
        unet = make_tiny_unet().cuda().half()
        tuner = randomize_(SCTuner(SCTunerConfig(), SkipLayout.from_unet(unet)), scale=0.05).cuda()
        attach(unet, tuner)
        if lean:
            lean_autograd(unet)
        saved = 0

        def pack(t):
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        inputs = {k: v.cuda() for k, v in unet_inputs(unet).items()}
        with torch.autocast("cuda", dtype=torch.float16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = unet(**inputs).sample
        out.float().pow(2).mean().backward()
        return saved, out.detach(), [p.grad.clone() for p in tuner.parameters()]

    plain_saved, plain_out, plain_grads = run(False)
    lean_saved, lean_out, lean_grads = run(True)
    torch.testing.assert_close(lean_out, plain_out, rtol=0, atol=0)
    for a, b in zip(plain_grads, lean_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert lean_saved < 0.7 * plain_saved, (lean_saved, plain_saved)


def test_norm_with_a_permuted_gradient():
    """A linear-projection transformer permutes the GroupNorm output: the incoming gradient is not contiguous."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 5, generator=g, requires_grad=True)
    w = torch.randn(4, generator=g)
    proj = torch.randn(4, 6, generator=g)

    def loss(fn):
        y = fn(x).permute(0, 2, 3, 1).reshape(2, 15, 4)
        return (y @ proj).square().sum()

    loss(lambda x: F.group_norm(x, 2, w, None, 1e-6)).backward()
    ref = x.grad.clone()
    x.grad = None
    loss(lambda x: _Norm.apply(x, w, None, 2, None, 1e-6, False, torch.float32)).backward()
    torch.testing.assert_close(x.grad, ref)


@pytest.mark.parametrize("groups,silu", [(2, False), (2, True), (0, False)])
def test_backward_in_batch_slices_matches_whole(monkeypatch, groups, silu):
    """Slicing the batch in the norms' and GEGLU's backward (to bound temporaries) changes no value."""
    import scedit_cli.lean.common as lean

    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    shape = [3] if not groups else None
    w = torch.randn(3 if not groups else 4, generator=g, dtype=torch.float64)
    b = torch.randn(3 if not groups else 4, generator=g, dtype=torch.float64)
    h = torch.randn(5, 7, 6, generator=g, dtype=torch.float64)

    def grads():
        leaves = [t.clone().requires_grad_() for t in (x, w, b, h)]
        y = _Norm.apply(leaves[0], leaves[1], leaves[2], groups, shape, 1e-5, silu, torch.float64)
        z = _GegluProduct.apply(leaves[3], "none")
        (y.sin().sum() + z.cos().sum()).backward()
        return [t.grad for t in leaves]

    whole = grads()
    monkeypatch.setattr(lean, "BACKWARD_SLICE_ELEMENTS", 40)  # 2 samples of x (36 each) -> 1 per slice
    assert len(lean.batch_slices(x)) == 5 and len(lean.batch_slices(torch.zeros(5, 4, 5))) == 3
    sliced = grads()
    for a, c in zip(whole, sliced):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    x_, w_, b_ = (t.clone().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: _Norm.apply(x, w, b, groups, shape, 1e-5, silu, torch.float64),
                                    (x_, w_, b_))


def test_resolve_lean():
    assert resolve_lean(True) is True and resolve_lean(False) is False and resolve_lean("auto") is True


def _prepared_step(lean):
    """A tiny SD 1.5 U-Net with SC-Tuners (random non-zero weights) prepared as `scedit train` does with
    train.lean = `lean`; (patched modules, saved bytes, loss, tuner gradients) of one step."""
    from scedit_cli.methods import build_method
    from scedit_cli.models import BaseModel
    from scedit_cli.recipes import TrainSection
    from scedit_cli.training.loop import prepare_training

    base = BaseModel.from_unet(make_tiny_unet("sd15"))
    method = build_method("sc", {})
    torch.manual_seed(0)
    method.setup(base)
    with torch.no_grad():
        for p in method.tuner.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    params, *_ = prepare_training(method, base, "cpu", torch.float32, TrainSection(lean=lean))
    patched = sum(PATCHED in m.__dict__ for m in base.unet.modules())
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = base.unet(**unet_inputs(base.unet)).sample.pow(2).mean()
    loss.backward()
    return patched, saved, loss.detach(), [p.grad.clone() for p in params]


def test_train_lean_switch_same_loss_and_gradients():
    on_patched, on_saved, on_loss, on_grads = _prepared_step(True)
    off_patched, off_saved, off_loss, off_grads = _prepared_step(False)
    assert on_patched > 0 and off_patched == 0
    assert torch.equal(on_loss, off_loss)
    for a, b in zip(on_grads, off_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert on_saved < 0.8 * off_saved, (on_saved, off_saved)
    auto_patched = _prepared_step("auto")[0]
    assert (auto_patched > 0) is AUTO_ON_CPU


def test_feed_forward_recompute_without_the_exact_savings():
    unet = make_tiny_unet()
    counts = lean_autograd(unet, recompute_feed_forward=True, exact=False)
    assert counts["feed_forward"] > 0 and counts["conv"] == counts["norm"] == 0
    assert lean_autograd(make_tiny_unet(), exact=False) == {"conv": 0, "norm": 0, "norm_silu": 0, "geglu": 0,
                                                            "frozen_ff": 0, "feed_forward": 0}
