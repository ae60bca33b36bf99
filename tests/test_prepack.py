"""Frozen CPU convolutions on weights reordered once for oneDNN (`scedit_cli.prepack`): same values and
input gradients as the stock convolution (to float rounding), nothing kept for backward, decided per call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scedit_cli import prepack
from scedit_cli.errors import SceditError
from scedit_cli.lean import lean_autograd, restore_autograd
from scedit_cli.lean.common import PATCHED
from scedit_cli.metrics.memory import SavedTensorCounter
from scedit_cli.prepack import _STATE, prepack_convs, reordered_nbytes, resolve_prepack, restore_convs
from tiny_models import make_tiny_unet, unet_inputs

pytestmark = pytest.mark.skipif(not prepack.available(), reason="this PyTorch build has no oneDNN")


def _frozen_conv(c_in, c_out, k=3, stride=1, padding=1, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding)
    conv.requires_grad_(False)
    return conv


def _saved_bytes(fn):
    with SavedTensorCounter() as counter:  # parameters counted too: lean's frozen conv keeps its weight
        out = fn()
    return out, counter.total


def _packed(conv) -> dict:
    packs = conv.__dict__[_STATE]
    return {"forward": "weight" in packs.forward, "backward": "weight" in packs.backward}


@pytest.mark.parametrize("k,padding", [(3, 1), (1, 0), (3, 0), (5, 2)])
def test_packed_conv_matches_stock_values_and_input_gradients(k, padding, monkeypatch):
    monkeypatch.setattr(prepack, "MIN_WEIGHT_RATIO", 0)  # the rule has its own test
    conv = _frozen_conv(64, 48, k=k, padding=padding)
    x = torch.randn(2, 64, 6, 5, requires_grad=True)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=padding)
    g = torch.randn_like(ref)
    (ref_gx,) = torch.autograd.grad(ref, x, g)

    assert prepack_convs(conv) == 1
    out, saved = _saved_bytes(lambda: conv(x))
    assert _packed(conv) == {"forward": True, "backward": False}
    assert saved == 0  # neither the input nor a weight copy is kept by autograd
    (gx,) = torch.autograd.grad(out, x, g)
    assert _packed(conv) == {"forward": True, "backward": True}
    assert out.is_contiguous() and gx.is_contiguous() and gx.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-5)
    assert conv.weight.grad is None
    # Two reordered copies (forward, input gradient), each at least the weight's bytes (oneDNN may pad).
    weight_bytes = conv.weight.numel() * 4
    assert 2 * weight_bytes <= reordered_nbytes([conv]) <= 4 * weight_bytes
    restore_convs(conv)
    assert reordered_nbytes([conv]) == 0


def test_real_size_sd_layer_takes_the_packed_path():
    """An SD U-Net decoder conv at 256 px (2560 -> 1280 channels on a 4x4 latent): far above the ratio."""
    conv = _frozen_conv(2560, 1280)
    x = torch.randn(1, 2560, 4, 4, requires_grad=True)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    prepack_convs(conv)
    out = conv(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert _packed(conv)["forward"]


def test_stock_path_below_the_ratio_for_trainable_weights_strided_backward_and_autocast(monkeypatch):
    conv = _frozen_conv(8, 8)
    prepack_convs(conv)
    conv(torch.randn(1, 8, 32, 32))  # 576 weights for 8192 outputs
    assert _packed(conv) == {"forward": False, "backward": False}

    monkeypatch.setattr(prepack, "MIN_WEIGHT_RATIO", 0)
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    trainable = nn.Conv2d(8, 8, 3, padding=1)
    prepack_convs(trainable)
    trainable(x).sum().backward()
    assert trainable.weight.grad is not None and _packed(trainable)["forward"] is False

    strided = _frozen_conv(8, 8, stride=2)
    prepack_convs(strided)
    ref = F.conv2d(x, strided.weight, strided.bias, stride=2, padding=1)
    torch.testing.assert_close(strided(x), ref)  # input gradient wanted: stride 2 stays stock
    assert _packed(strided)["forward"] is False
    with torch.no_grad():
        torch.testing.assert_close(strided(x), ref, rtol=1e-5, atol=1e-5)  # no gradient: packed forward
    assert _packed(strided)["forward"] is True

    bf = _frozen_conv(8, 8)
    prepack_convs(bf)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bf(x).dtype == torch.bfloat16
    assert _packed(bf)["forward"] is False


def test_new_weights_or_shapes_are_reordered_again(monkeypatch):
    monkeypatch.setattr(prepack, "MIN_WEIGHT_RATIO", 0)
    conv = _frozen_conv(16, 16)
    prepack_convs(conv)
    x = torch.randn(1, 16, 5, 5)
    conv(x)
    with torch.no_grad():
        conv.load_state_dict(_frozen_conv(16, 16, seed=1).state_dict())  # written in place
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)
    y = torch.randn(3, 16, 7, 4)
    torch.testing.assert_close(conv(y), F.conv2d(y, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)
    assert conv.__dict__[_STATE].forward["key"][0] == (3, 16, 7, 4)  # one reordered copy per direction


def test_wraps_lean_and_restores_in_order(monkeypatch):
    """After lean: a conv below the ratio still runs lean's frozen conv (keeps no input); restoring
    gives lean's forward back, then the stock one."""
    conv = _frozen_conv(8, 8)
    lean_autograd(conv)
    lean_forward = conv.__dict__["forward"]
    assert prepack_convs(conv) == 1 and prepack_convs(conv) == 0
    x = torch.randn(1, 8, 32, 32, requires_grad=True)
    _, saved = _saved_bytes(lambda: conv(x))
    assert saved == conv.weight.numel() * 4  # lean's frozen conv keeps the weight only
    restore_convs(conv)
    assert conv.__dict__["forward"] == lean_forward and _STATE not in conv.__dict__
    restore_autograd(conv)
    assert "forward" not in conv.__dict__ and PATCHED not in conv.__dict__


def test_tiny_unet_same_gradients_and_resolve():
    torch.manual_seed(0)
    unet = make_tiny_unet("sd15")
    unet.requires_grad_(False)
    unet.conv_in.requires_grad_(True)  # gradients flow back through every frozen conv, as to a tuner
    inputs = unet_inputs(unet)
    ref = unet(**inputs).sample
    ref.pow(2).mean().backward()
    ref_grad = unet.conv_in.weight.grad.clone()
    unet.conv_in.weight.grad = None
    assert prepack_convs(unet) > 0
    out = unet(**inputs).sample
    out.pow(2).mean().backward()
    assert any(_packed(m)["backward"] for m in unet.modules() if _STATE in m.__dict__)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unet.conv_in.weight.grad, ref_grad, rtol=1e-4, atol=1e-6)
    restore_convs(unet)
    assert not [n for n, m in unet.named_modules() if "forward" in m.__dict__ or _STATE in m.__dict__]

    assert resolve_prepack(False) is False and resolve_prepack("auto") is True and resolve_prepack(True) is True


def test_prepack_true_without_onednn_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(prepack, "available", lambda: False)
    assert resolve_prepack("auto") is False
    with pytest.raises(SceditError, match="train.prepack = true"):
        resolve_prepack(True)


@pytest.mark.parametrize("setting", [True, False])
def test_prepared_training_counts_the_reordered_copies(setting):
    """`prepare_training` with train.prepack: the copies exist during training, the step's memory report
    counts them in the accounted total, and restoring frees them."""
    from scedit_cli.methods import build_method
    from scedit_cli.metrics.memory import measure_step_memory
    from scedit_cli.models import BaseModel
    from scedit_cli.recipes import TrainSection
    from scedit_cli.training.loop import prepare_training

    base = BaseModel.from_unet(make_tiny_unet("sd15"))
    method = build_method("sc", {})
    method.setup(base)
    parts = prepare_training(method, base, "cpu", torch.float32, TrainSection(prepack=setting))

    def step():
        base.unet(**unet_inputs(base.unet)).sample.pow(2).mean().backward()
        parts.optimizer.step()
        parts.optimizer.zero_grad()

    step()
    report = measure_step_memory(step, modules=[base.unet], trainable=parts.params, optimizer=parts.optimizer,
                                 device="cpu")
    assert (report.reordered_bytes > 0) is setting
    assert report.accounted_bytes == (report.params_bytes + report.buffers_bytes + report.grads_bytes
                                      + report.optimizer_bytes + report.saved_bytes + report.reordered_bytes)
    parts.restore()
    assert reordered_nbytes([base.unet]) == 0
