"""Core SC-/CSC-Tuner behaviour on tiny configs of the real diffusers U-Nets."""

from __future__ import annotations

import pytest
import torch

from scedit_cli.errors import SceditError
from scedit_cli.tuners import (
    CSCTuner,
    CSCTunerConfig,
    SCTuner,
    SCTunerConfig,
    SkipLayout,
    attach,
    detach,
    get_editor,
)
from tiny_models import make_tiny_unet, randomize_, unet_inputs

COND_SIZE = 16  # tiny U-Net input is the latent itself: hint_downscale=1


def _randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    randomize_(module, seed, scale=0.05)


def _csc(layout, seed=0, randomize=True, **kw):
    torch.manual_seed(seed)
    t = CSCTuner(CSCTunerConfig(hint_downscale=1, hint_kernel=kw.pop("hint_kernel", 3), **kw), layout)
    if randomize:
        _randomize_(t, seed)
    return t


def _cond(batch=2, seed=3):
    return torch.rand(batch, 3, COND_SIZE, COND_SIZE, generator=torch.Generator().manual_seed(seed))


def test_layout_discovered_from_model(tiny_unet, tiny_sdxl_unet):
    sd = SkipLayout.from_unet(tiny_unet)
    assert sd.num_skips == 12
    assert sd.channels == (8, 8, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32)
    assert sd.downscale == (1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8)
    assert [len(g) for g in sd.up_block_skips] == [3, 3, 3, 3]
    assert sd.up_block_skips[0] == (9, 10, 11)
    xl = SkipLayout.from_unet(tiny_sdxl_unet)
    assert xl.num_skips == 9
    assert xl.channels == (8, 8, 8, 8, 16, 16, 16, 32, 32)


@pytest.mark.parametrize(
    "arch,channels",
    [
        ("sd15", (320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280)),
        ("sd21", (320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280)),
        ("sdxl", (320, 320, 320, 320, 640, 640, 640, 1280, 1280)),
    ],
)
def test_real_size_layouts_on_meta(arch, channels):
    from scedit_cli.architectures import build_unet

    layout = SkipLayout.from_unet(build_unet(arch))
    assert layout.channels == channels
    tuner = SCTuner(SCTunerConfig(), layout)
    assert len(tuner.tuners) == len(channels)
    half = build_unet(arch, dtype=torch.float16)  # the dtype applies on meta too (it was ignored there)
    assert {p.dtype for p in half.parameters()} == {torch.float16} and half.device.type == "meta"


def test_sdxl_gets_nine_tuners_and_runs(tiny_sdxl_unet):
    layout = SkipLayout.from_unet(tiny_sdxl_unet)
    tuner = SCTuner(SCTunerConfig(), layout)
    assert len(tuner.tuners) == 9
    _randomize_(tuner)
    inputs = unet_inputs(tiny_sdxl_unet)
    with torch.no_grad():
        base = tiny_sdxl_unet(**inputs).sample
        attach(tiny_sdxl_unet, tuner)
        tuned = tiny_sdxl_unet(**inputs).sample
    assert not torch.equal(base, tuned)


def test_fresh_sc_tuner_is_bit_identical(tiny_unet):
    inputs = unet_inputs(tiny_unet)
    with torch.no_grad():
        base = tiny_unet(**inputs).sample
        attach(tiny_unet, SCTuner(SCTunerConfig(ratio=2), SkipLayout.from_unet(tiny_unet)))
        tuned = tiny_unet(**inputs).sample
    assert torch.equal(base, tuned)


@pytest.mark.parametrize("kernel", [1, 3])
def test_fresh_csc_tuner_is_bit_identical(tiny_unet, kernel):
    inputs = unet_inputs(tiny_unet)
    layout = SkipLayout.from_unet(tiny_unet)
    tuner = _csc(layout, randomize=False, hint_kernel=kernel)
    with torch.no_grad():
        base = tiny_unet(**inputs).sample
        attach(tiny_unet, tuner)
        tuner.set_condition(_cond())
        tuned = tiny_unet(**inputs).sample
    assert torch.equal(base, tuned)


def test_hint_features_match_skip_shapes(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    hints = _csc(layout).encode_condition(_cond())
    for s, c in hints.items():
        scale = layout.downscale[s]
        assert c.shape == (2, layout.channels[s], COND_SIZE // scale, COND_SIZE // scale)


def test_pre_hint_downscales_by_vae_factor():
    layout = SkipLayout.from_unet(make_tiny_unet())
    tuner = CSCTuner(CSCTunerConfig(hint_downscale=8), layout)
    hints = tuner.encode_condition(torch.rand(1, 3, 128, 128))
    assert hints[0].shape[-2:] == (16, 16)


def test_sdxl_hint_encoder_official_width_feeds_all_nine_skips(tiny_sdxl_unet):
    from scedit_cli.tuners.config import default_pre_hint

    layout = SkipLayout.from_unet(tiny_sdxl_unet)
    ratio, out = default_pre_hint(is_sdxl=True)
    tuner = CSCTuner(CSCTunerConfig(hint_downscale=8, pre_hint_dim_ratio=ratio, pre_hint_out_channels=out), layout)
    convs = [m for m in tuner.hint.pre_hint_blocks if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 192, 192, 320]
    hints = tuner.encode_condition(torch.rand(1, 3, 128, 128))
    assert sorted(hints) == list(range(9))
    for s, c in hints.items():
        assert c.shape == (1, layout.channels[s], 16 // layout.downscale[s], 16 // layout.downscale[s])
    with pytest.raises(SceditError, match="pre_hint_dim_ratio: 0.01 with"):
        CSCTuner(CSCTunerConfig(pre_hint_dim_ratio=0.01), layout)


def test_detach_restores_base_exactly(tiny_unet):
    inputs = unet_inputs(tiny_unet)
    before = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
    flags = {n: p.requires_grad for n, p in tiny_unet.named_parameters()}
    with torch.no_grad():
        base = tiny_unet(**inputs).sample
    tuner = SCTuner(SCTunerConfig(), SkipLayout.from_unet(tiny_unet))
    _randomize_(tuner)
    attach(tiny_unet, tuner)
    assert all(not p.requires_grad for p in tiny_unet.parameters())
    assert set(tiny_unet.state_dict()) == set(before)  # tuners live outside the module tree
    detach(tiny_unet)
    assert get_editor(tiny_unet) is None
    with torch.no_grad():
        after = tiny_unet(**inputs).sample
    assert torch.equal(base, after)
    assert {n: p.requires_grad for n, p in tiny_unet.named_parameters()} == flags
    for k, v in tiny_unet.state_dict().items():
        assert torch.equal(v, before[k])


def test_attach_twice_and_detach_unattached_are_clear_errors(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    with pytest.raises(SceditError, match="no SCEdit tuners attached"):
        detach(tiny_unet)
    attach(tiny_unet, SCTuner(SCTunerConfig(), layout))
    with pytest.raises(SceditError, match="already has SCEdit tuners attached"):
        attach(tiny_unet, SCTuner(SCTunerConfig(), layout))


def test_attach_to_mismatched_unet_is_clear_error(tiny_unet, tiny_sdxl_unet):
    tuner = SCTuner(SCTunerConfig(), SkipLayout.from_unet(tiny_unet))
    with pytest.raises(SceditError, match="9 skips"):
        attach(tiny_sdxl_unet, tuner)


def test_one_optimizer_step_changes_only_tuner_parameters(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    tuner = CSCTuner(CSCTunerConfig(hint_downscale=1), layout)
    base_before = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
    tuner_before = {k: v.clone() for k, v in tuner.state_dict().items()}
    attach(tiny_unet, tuner)
    opt = torch.optim.AdamW(tuner.parameters(), lr=1e-2)
    tiny_unet.train()
    inputs = unet_inputs(tiny_unet)
    tuner.set_condition(_cond())
    loss = tiny_unet(**inputs).sample.pow(2).mean()
    loss.backward()
    opt.step()
    for k, v in tiny_unet.state_dict().items():
        assert torch.equal(v, base_before[k]), k
    changed = [k for k, v in tuner.state_dict().items() if not torch.equal(v, tuner_before[k])]
    # Zero-initialised up projections and hint convs receive gradients first.
    assert any(".ln2." in k for k in changed)
    assert any("dense_hint_blocks" in k for k in changed)
    assert all(p.grad is None for p in tiny_unet.parameters())


class _SavedBytes:
    """Bytes autograd saves for backward, split by whether the encoder/middle block was running."""

    def __init__(self, unet):
        self.upstream = 0
        self.total = 0
        self._depth = 0
        self._handles = []
        for m in list(unet.down_blocks) + [unet.mid_block, unet.conv_in, unet.time_embedding]:
            self._handles.append(m.register_forward_pre_hook(self._enter))
            self._handles.append(m.register_forward_hook(self._leave))

    def _enter(self, *_):
        self._depth += 1

    def _leave(self, *_):
        self._depth -= 1

    def pack(self, t):
        n = t.numel() * t.element_size()
        self.total += n
        if self._depth:
            self.upstream += n
        return t

    def measure(self, fn):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            out = fn()
        for h in self._handles:
            h.remove()
        return out


def _train_forward(unet):
    unet.train()
    return unet(**unet_inputs(unet, batch=2)).sample.pow(2).mean()


def test_sc_tuner_stores_no_encoder_activations_and_far_less_than_lora():
    from scedit_cli.methods import build_method
    from scedit_cli.models import BaseModel

    sc_unet = make_tiny_unet()
    attach(sc_unet, SCTuner(SCTunerConfig(), SkipLayout.from_unet(sc_unet)))
    sc = _SavedBytes(sc_unet)
    sc.measure(lambda: _train_forward(sc_unet)).backward()

    lora_unet = make_tiny_unet()
    build_method("lora", {"rank": 4}).setup(BaseModel.from_unet(lora_unet))
    lora = _SavedBytes(lora_unet)
    lora.measure(lambda: _train_forward(lora_unet)).backward()

    assert sc.total > 0
    assert sc.upstream == 0
    assert lora.upstream > 0
    assert sc.total < 0.6 * lora.total, (sc.total, lora.total)


def test_two_conditions_follow_eq7(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    a, b = _csc(layout, seed=1), _csc(layout, seed=2)
    editor = attach(tiny_unet, [a, b], weights=[0.3, 0.7])
    a.set_condition(_cond(seed=4))
    b.set_condition(_cond(seed=5))
    x = torch.randn(2, 32, 2, 2)
    skip = 11  # deepest skip: 32 channels at 1/8 scale
    ca, cb = a._hints[skip], b._hints[skip]
    ja, jb = str(a.encoder_to_decoder[skip]), str(b.encoder_to_decoder[skip])
    expected = x + 0.3 * (a.tuners[ja](x + ca) + ca) + 0.7 * (b.tuners[jb](x + cb) + cb)
    torch.testing.assert_close(editor.edit(skip, x), expected)


def test_weight_zero_equals_other_condition_alone(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    inputs = unet_inputs(tiny_unet)
    a, b = _csc(layout, seed=1), _csc(layout, seed=2)
    with torch.no_grad():
        attach(tiny_unet, [a, b], weights=[1.0, 0.0])
        a.set_condition(_cond(seed=4))
        b.set_condition(_cond(seed=5))
        both = tiny_unet(**inputs).sample
        detach(tiny_unet)
        attach(tiny_unet, a)
        alone = tiny_unet(**inputs).sample
    assert torch.equal(both, alone)


def test_condition_features_tile_over_cfg_batch(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    tuner = _csc(layout)
    attach(tiny_unet, tuner)
    tuner.set_condition(_cond(batch=2))
    inputs = unet_inputs(tiny_unet, batch=4)  # [uncond, cond] halves
    with torch.no_grad():
        out = tiny_unet(**inputs).sample
    assert out.shape[0] == 4


def test_csc_without_condition_is_clear_error(tiny_unet):
    attach(tiny_unet, _csc(SkipLayout.from_unet(tiny_unet)))
    with pytest.raises(SceditError, match="no condition image"):
        tiny_unet(**unet_inputs(tiny_unet))


def test_half_precision_base_with_fp32_tuners(tiny_unet):
    unet = tiny_unet.to(torch.bfloat16)
    tuner = SCTuner(SCTunerConfig(), SkipLayout.from_unet(unet))
    _randomize_(tuner)
    attach(unet, tuner)
    inputs = {k: (v.to(torch.bfloat16) if torch.is_floating_point(v) else v)
              for k, v in unet_inputs(unet).items()}
    out = unet(**inputs).sample
    out.float().pow(2).mean().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None for p in tuner.parameters())


def test_ops_in_half_precision_for_inference(tiny_unet):
    """Sampling runs the per-skip OPs in the base's dtype; the fp32 tuner given is never rounded."""
    layout = SkipLayout.from_unet(tiny_unet)
    csc = _csc(layout)
    before = {k: v.clone() for k, v in csc.state_dict().items()}
    half = csc.ops_in(torch.bfloat16)
    assert half is not csc
    assert all(p.dtype == torch.bfloat16 for p in half.tuners.parameters())
    assert all(p.dtype == torch.float32 for p in half.hint.parameters())  # run once per image: kept
    assert all(torch.equal(v, before[k]) and v.dtype == torch.float32 for k, v in csc.state_dict().items())
    assert half.ops_in(torch.bfloat16) is half
    unet = tiny_unet.to(torch.bfloat16)
    inputs = {k: (v.to(torch.bfloat16) if torch.is_floating_point(v) else v) for k, v in unet_inputs(unet).items()}
    half.set_condition(_cond())
    attach(unet, half)
    with torch.no_grad():
        assert torch.isfinite(unet(**inputs).sample).all()
    sc = SCTuner(SCTunerConfig(), layout)
    assert sc.ops_in(torch.float16, copy=False) is sc and next(sc.parameters()).dtype == torch.float16


def test_pre_hint_encoder_keeps_the_condition_signal():
    """The condition must reach the hint features at a usable scale from step 0."""
    from scedit_cli.tuners.csc import pre_hint_encoder

    torch.manual_seed(0)
    enc = pre_hint_encoder(3, 4)
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(8, 3, 32, 32, generator=g) > 0.85).float()
    b = (torch.rand(8, 3, 32, 32, generator=g) > 0.85).float()
    with torch.no_grad():
        diff = (enc(a) - enc(b)).std() / a.std()
    assert diff > 0.3, float(diff)  # PyTorch's default init gives ~3e-4


def test_linear_op_matches_per_pixel_linears_and_keeps_only_its_input():
    """LinearOp runs as matmuls on the folded skip that keep only x; values and gradients are those
    of ln2(GELU(ln1(x))) over channels-last pixels, the official form, and of the 1x1 convolutions."""
    from scedit_cli.tuners.ops import LinearOp, _PixelMLP

    g = torch.Generator().manual_seed(0)
    op = LinearOp(6, 4).double()
    with torch.no_grad():
        for p in op.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(2, 6, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)

    def reference(x):
        return op.ln2(op.act(op.ln1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)

    ref = reference(x)
    ref.square().sum().backward()
    ref_grads = [x.grad.clone()] + [p.grad.clone() for p in op.parameters()]
    x.grad = None
    op.zero_grad()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = op(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for a, b in zip(ref_grads, [x.grad] + [p.grad for p in op.parameters()]):
        torch.testing.assert_close(a, b)
    activations = [t for t in saved if t.dim() == 4 and t.shape[0] == 2]
    assert len(activations) == 1 and activations[0] is x  # the hidden 4-channel maps are recomputed
    w1, b1 = op.ln1.weight.detach(), op.ln1.bias.detach()
    w2, b2 = op.ln2.weight.detach(), op.ln2.bias.detach()
    args = [t.clone().requires_grad_() for t in (x.detach(), w1, b1, w2, b2)]
    assert torch.autograd.gradcheck(_PixelMLP.apply, args)
    conv = torch.nn.functional.conv2d
    y = [t.clone().requires_grad_() for t in (x.detach(), w1, b1, w2, b2)]
    conv(torch.nn.functional.gelu(conv(y[0], y[1][:, :, None, None], y[2])), y[3][:, :, None, None], y[4]).square().sum().backward()
    for a, b in zip([x.grad] + [p.grad for p in op.parameters()], [t.grad for t in y]):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(op(x), ref)
        torch.testing.assert_close(op(x[:1]), ref[:1])  # batch 1: the fold is a view


def test_the_torch_free_method_list_is_the_registrys():
    """`tuners.files` checks a config's method without importing the tuner classes; both lists must agree."""
    from scedit_cli.tuners.files import TUNER_METHODS
    from scedit_cli.tuners.registry import TUNER_TYPES

    assert set(TUNER_METHODS) == set(TUNER_TYPES)
