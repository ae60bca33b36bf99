"""The skip edit when sampling (no autograd): same values as training's, in fewer operators."""

from __future__ import annotations

import copy

import pytest
import torch

from scedit_cli.metrics.dispatch import OpCounter
from scedit_cli.tuners import CSCTuner, CSCTunerConfig, SCTuner, SCTunerConfig, SkipLayout, attach
from tiny_models import make_tiny_unet, randomize_, unet_inputs

SKIP = 11  # deepest skip of the tiny SD U-Net: 32 channels at 1/8 scale, 2x2 for a 16 px input


def _tuners(layout, kinds):
    out = []
    for i, kind in enumerate(kinds):
        torch.manual_seed(i)
        t = SCTuner(SCTunerConfig(), layout) if kind == "sc" else CSCTuner(CSCTunerConfig(hint_downscale=1), layout)
        randomize_(t, seed=i, scale=0.05)
        if kind == "csc":
            with torch.no_grad():
                t.set_condition(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(10 + i)))
        out.append(t)
    return out


def _edit_both_ways(editor, x):
    """(sampling edit, training edit) of skip SKIP."""
    with torch.no_grad():
        fast = editor.edit(SKIP, x)
    with torch.enable_grad():
        slow = editor.edit(SKIP, x).detach()
    return fast, slow


@pytest.mark.parametrize("kinds,weights", [(["sc"], [1.0]), (["csc"], [1.0]), (["sc"], [0.4]),
                                           (["csc", "csc"], [0.3, 0.7]), (["sc", "csc"], [1.0, 0.5])])
@pytest.mark.parametrize("batch", [1, 2])  # 2: classifier-free guidance over one condition image
def test_sampling_edit_equals_training_edit(tiny_unet, kinds, weights, batch):
    tuners = _tuners(SkipLayout.from_unet(tiny_unet), kinds)
    for t in tuners:
        t.scale = 0.8
    editor = attach(tiny_unet, tuners, weights)
    x = torch.randn(batch, 32, 2, 2)
    fast, slow = _edit_both_ways(editor, x)
    assert not torch.equal(fast, x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kinds", [["sc"], ["csc"], ["sc", "csc"], ["csc", "csc"]])
def test_sampling_edit_runs_four_kernels_per_skip_whatever_the_tuners(tiny_unet, kinds):
    editor = attach(tiny_unet, _tuners(SkipLayout.from_unet(tiny_unet), kinds), [0.6] * len(kinds))
    x = torch.randn(2, 32, 2, 2)
    with torch.no_grad():
        editor.edit(SKIP, x)  # the first step of an image makes the terms that stay for all of it
        with OpCounter() as fast:
            editor.edit(SKIP, x)
    with OpCounter() as slow:
        editor.edit(SKIP, x)
    assert fast.kernels == 4, fast.ops
    assert not {"aten.clone.default", "aten.repeat.default", "aten.mul.Tensor", "aten.cat.default"} & set(fast.ops)
    # Training keeps its autograd path (folded copies, addmm).
    assert "aten.baddbmm.default" not in slow.ops and slow.kernels > fast.kernels, slow.ops


BLOCK = (11, 10, 9)  # what the tiny U-Net's first up block receives: three 32-channel skips at 1/8 scale


def _block_both_ways(editor, xs):
    """(sampling edit, its operator count, training edit) of the skips BLOCK, the sampling edit counted on
    its second call (the first makes the plans that stay for the image)."""
    with torch.no_grad():
        editor.edit_block(BLOCK, xs)
        with OpCounter() as counter:
            fast = editor.edit_block(BLOCK, xs)
    with torch.enable_grad():
        slow = [t.detach() for t in editor.edit_block(BLOCK, xs)]
    return fast, counter, slow


@pytest.mark.parametrize("kinds", [["sc"], ["csc"], ["sc", "csc", "csc"]])
def test_same_shape_skips_of_an_up_block_run_as_one_batch(tiny_unet, kinds):
    editor = attach(tiny_unet, _tuners(SkipLayout.from_unet(tiny_unet), kinds), [0.5, 1.0, 0.3][:len(kinds)])
    editor.stack_skips = True  # the default stacks them except on a CPU
    xs = [torch.randn(2, 32, 2, 2) for _ in BLOCK]
    got, fast, slow = _block_both_ways(editor, xs)
    with torch.no_grad():
        per_skip = [editor.edit(s, x) for s, x in zip(BLOCK, xs)]
    assert fast.kernels == 5, fast.ops  # the stack, then the four of one skip
    for g, p, s, x in zip(got, per_skip, slow, xs):
        assert g.shape == x.shape and not torch.equal(g, x)
        torch.testing.assert_close(g, s, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stack, kernels", [(None, 3 * 4), (False, 3 * 4), (True, 5)])
def test_skips_are_stacked_except_on_a_cpu_unless_asked(tiny_unet, stack, kernels):
    editor = attach(tiny_unet, _tuners(SkipLayout.from_unet(tiny_unet), ["csc"]))
    editor.stack_skips = stack
    xs = [torch.randn(2, 32, 2, 2) for _ in BLOCK]
    with torch.no_grad():
        editor.edit_block(BLOCK, xs)
        with OpCounter() as counter:
            editor.edit_block(BLOCK, xs)
    assert counter.kernels == kernels, counter.ops


def test_a_block_groups_skips_by_shape_and_by_the_tuners_acting(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    torch.manual_seed(0)
    deep_only = randomize_(SCTuner(SCTunerConfig(skips=[0]), layout), seed=3, scale=0.05)  # j=0: skip 11
    sc, csc = _tuners(layout, ["sc", "csc"])
    editor = attach(tiny_unet, [sc, csc, deep_only], [1.0, 0.5, 0.7])
    editor.stack_skips = True
    xs = [torch.randn(2, 32, 2, 2) for _ in BLOCK]
    got, fast, slow = _block_both_ways(editor, xs)
    assert fast.kernels == 4 + 5, fast.ops  # skip 11 alone (three tuners), skips 10 and 9 together (two)
    for g, s in zip(got, slow):
        torch.testing.assert_close(g, s, rtol=1e-5, atol=1e-6)


def test_a_tuner_without_a_fused_form_adds_its_delta_beside_the_fused_ones(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    torch.manual_seed(0)
    conv = randomize_(SCTuner(SCTunerConfig(op="conv3x3"), layout), seed=4, scale=0.05)
    sc, csc = _tuners(layout, ["sc", "csc"])
    editor = attach(tiny_unet, [sc, conv, csc], [1.0, 0.4, 0.5])
    editor.stack_skips = True
    xs = [torch.randn(2, 32, 2, 2) for _ in BLOCK]
    with torch.no_grad():
        got = editor.edit_block(BLOCK, xs)
    with torch.enable_grad():
        slow = [t.detach() for t in editor.edit_block(BLOCK, xs)]
    for g, s in zip(got, slow):
        torch.testing.assert_close(g, s, rtol=1e-5, atol=1e-6)


def test_terms_made_once_follow_weights_condition_and_scale(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    sc, csc = _tuners(layout, ["sc", "csc"])
    editor = attach(tiny_unet, [sc, csc], [1.0, 0.6])
    x = torch.randn(2, 32, 2, 2)

    def check():
        fast, slow = _edit_both_ways(editor, x)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
        return fast

    before = check()
    with torch.no_grad():  # an optimizer step writes the weights in place
        for t in (sc, csc):
            for p in t.tuners.parameters():
                p.mul_(0.9)
    assert not torch.equal(check(), before)
    with torch.no_grad():
        csc.set_condition(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(99)))
    check()
    csc.scale = 0.3
    check()
    editor.set_weights([0.5, 1.0])
    check()
    csc.load_state_dict({k: v * 0.5 for k, v in csc.state_dict().items()})
    check()
    for dtype in (torch.float64, torch.float32):  # `.to()` gives the same parameters new data
        for t in (sc, csc):
            t.to(dtype)
        x = x.to(dtype)
        assert check().dtype == dtype
    assert editor._plans
    assert not copy.deepcopy(editor)._plans


def test_other_dtypes_and_autograd_take_the_training_path(tiny_unet):
    sc, = _tuners(SkipLayout.from_unet(tiny_unet), ["sc"])
    editor = attach(tiny_unet, [sc])
    x = torch.randn(2, 32, 2, 2)
    with torch.no_grad(), OpCounter() as fp32_op_bf16_skip:
        out = editor.edit(SKIP, x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert "aten.baddbmm.default" not in fp32_op_bf16_skip.ops
    with torch.no_grad():
        torch.testing.assert_close(out.float(), editor.edit(SKIP, x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("stack", [False, True])  # True: what a GPU runs
def test_unet_samples_the_same_through_either_path(arch, stack):
    unet = make_tiny_unet(arch)
    tuners = _tuners(SkipLayout.from_unet(unet), ["sc", "csc", "csc"])
    editor = attach(unet, tuners, [1.0, 0.3, 0.7])
    editor.stack_skips = stack
    inputs = unet_inputs(unet, batch=2)
    with torch.no_grad():
        fast = unet(**inputs).sample
        again = unet(**inputs).sample  # the plans made by the first call
    with torch.enable_grad():
        slow = unet(**inputs).sample.detach()
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    assert torch.equal(fast, again)


def test_tuners_edit_a_meta_unet_without_asking_autocast(tiny_unet):
    """The sampling edit asks whether autocast is on; on devices without autocast ("meta", where real-size
    U-Nets are built) the answer is no, not an error."""
    sc, csc = _tuners(SkipLayout.from_unet(tiny_unet), ["sc", "csc"])
    editor = attach(tiny_unet.to("meta"), [sc.to("meta"), csc.to("meta")])
    csc.set_hints({s: torch.empty(1, *c.shape[1:], device="meta") for s, c in csc._hints.items()})
    with torch.no_grad():
        out = editor.edit_block(BLOCK, [torch.empty(2, 32, 2, 2, device="meta") for _ in BLOCK])
    assert [tuple(t.shape) for t in out] == [(2, 32, 2, 2)] * 3 and out[0].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the stacked edit in fp16 on CUDA")
def test_on_a_gpu_skips_are_stacked_and_fp16_sampling_agrees_with_training():
    unet = make_tiny_unet("sd15").to("cuda", torch.float16)
    tuners = [t.ops_in(torch.float16).to("cuda") for t in _tuners(SkipLayout.from_unet(make_tiny_unet("sd15")),
                                                                    ["sc", "csc", "csc"])]
    for t in tuners:
        if isinstance(t, CSCTuner):
            t.set_hints({s: c.to("cuda") for s, c in t._hints.items()})
    editor = attach(unet, tuners, [1.0, 0.3, 0.7])
    xs = [torch.randn(2, 32, 2, 2, device="cuda", dtype=torch.float16) for _ in BLOCK]
    fast, counter, slow = _block_both_ways(editor, xs)
    assert editor.stack_skips is None and counter.kernels == 5, counter.ops
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=2e-2, atol=2e-3)
