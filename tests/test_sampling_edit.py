"""The skip edit when sampling (no autograd): same values as training's, in fewer operators."""

from __future__ import annotations

import copy

import pytest
import torch

from scedit_cli.metrics.dispatch import OpCounter
from scedit_cli.tuners import CSCTuner, CSCTunerConfig, SCTuner, SCTunerConfig, SkipLayout, attach
from tiny_models import randomize_, unet_inputs

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


@pytest.mark.parametrize("kind", ["sc", "csc"])
def test_sampling_edit_runs_four_kernels_per_tuner(tiny_unet, kind):
    editor = attach(tiny_unet, _tuners(SkipLayout.from_unet(tiny_unet), [kind]))
    x = torch.randn(2, 32, 2, 2)
    with torch.no_grad():
        editor.edit(SKIP, x)  # the first step of an image makes the CSC terms that stay for all of it
        with OpCounter() as fast:
            editor.edit(SKIP, x)
    with OpCounter() as slow:
        editor.edit(SKIP, x)
    assert fast.kernels == 4, fast.ops
    assert not {"aten.clone.default", "aten.repeat.default", "aten.mul.Tensor"} & set(fast.ops), fast.ops
    # Training keeps its autograd path (folded copies, addmm).
    assert "aten.baddbmm.default" not in slow.ops and slow.kernels > fast.kernels, slow.ops


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
    copied = copy.deepcopy(csc)
    assert not copied._sampling_terms and not copied.tuners[str(csc.encoder_to_decoder[SKIP])]._batched


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


def test_unet_samples_the_same_through_either_path(tiny_unet):
    tuners = _tuners(SkipLayout.from_unet(tiny_unet), ["sc", "csc", "csc"])
    attach(tiny_unet, tuners, [1.0, 0.3, 0.7])
    inputs = unet_inputs(tiny_unet, batch=2)
    with torch.no_grad():
        fast = tiny_unet(**inputs).sample
    with torch.enable_grad():
        slow = tiny_unet(**inputs).sample.detach()
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
