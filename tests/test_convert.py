"""`scedit convert`: state dicts laid out like the official SCEdit checkpoints (built here) convert exactly.

The reference below re-implements the official forward (scepter
`unet_module._forward_control` / `_forward_origin`) with modules named like the
official ones, independently of our tuner code: tuner m edits the skip popped
at decoder step m; dense hint block i (encoder order) produces the hint for
encoder skip i; the edit is `hint + T_m(skip + hint)` (CSC) or `T_m(skip)` (SC).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from scedit_cli.convert import convert_checkpoint
from scedit_cli.errors import SceditError
from scedit_cli.tuners import SkipLayout, attach, detach, load_tuner
from tiny_models import make_tiny_pipeline, make_tiny_unet, randomize_, unet_inputs




class _TunerOp(nn.Module):  # scepter SCEAdapter
    def __init__(self, dim, length):
        super().__init__()
        self.ln1 = nn.Linear(dim, length)
        self.activate = nn.GELU()
        self.ln2 = nn.Linear(length, dim)

    def forward(self, x):
        y = self.ln2(self.activate(self.ln1(x.permute(0, 2, 3, 1))))
        return y.permute(0, 3, 1, 2)


class _SCTuner(nn.Module):  # scepter SCTuner: `.tuner_op`
    def __init__(self, dim, length):
        super().__init__()
        self.tuner_op = _TunerOp(dim, length)


def _official_csc(layout: SkipLayout, kernel: int, down_ratio: float = 1.0, downscale: int = 2,
                  dim_ratio: float = 1.0, out_channels: int = 256):
    """An nn.Module with scepter CSCTuners' names and shapes (pre-hint strided `downscale`x;
    PRE_HINT_DIM_RATIO `dim_ratio`, PRE_HINT_OUT_CHANNELS `out_channels`)."""
    m = nn.Module()
    chans = [int(c * dim_ratio) for c in (16, 16, 32, 32, 96, 96)] + [out_channels]
    strided = {2: 2, 4: 2, 6: 2}
    n_strided = {1: 0, 2: 1, 4: 2, 8: 3}[downscale]
    layers, c_in = [], 3
    for i, c in enumerate(chans):
        if i:
            layers.append(nn.SiLU())
        stride = 2 if i in list(strided)[:n_strided] else 1
        layers.append(nn.Conv2d(c_in, c, 3, padding=1, stride=stride))
        c_in = c
    m.pre_hint_blocks = nn.Sequential(*layers)
    dense, ch = [], out_channels
    scale = 1
    for i, c in enumerate(layout.channels):
        stride = layout.downscale[i] // scale
        scale = layout.downscale[i]
        dense.append(nn.Sequential(nn.SiLU(), nn.Conv2d(ch, c, kernel, padding=1 if kernel == 3 else 0, stride=stride)))
        ch = c
    m.dense_hint_blocks = nn.ModuleList(dense)
    m.lsc_tuner_blocks = nn.ModuleList(
        [_SCTuner(c, int(c * down_ratio)) for c in layout.channels[::-1]]
    )
    randomize_(m, scale=0.1)
    return m


def _reference_output(unet, layout, edit):
    """U-Net output with `edit(m, skip) -> new skip` applied at decoder step m (official order)."""
    n = layout.num_skips
    hooks = []
    for block, skips in zip(unet.up_blocks, layout.up_block_skips):
        def hook(module, args, kwargs, skips=skips):
            res = kwargs["res_hidden_states_tuple"]
            kwargs["res_hidden_states_tuple"] = tuple(edit(n - 1 - s, x) for s, x in zip(skips, res))
            return args, kwargs
        hooks.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            return unet(**unet_inputs(unet)).sample
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    make_tiny_pipeline(root / "sd15")
    unet = make_tiny_unet("sd15")
    return root, unet, SkipLayout.from_unet(unet)


def _ours_output(unet, tuner, cond=None):
    if cond is not None:
        tuner.set_condition(cond)
    attach(unet, tuner)
    try:
        with torch.no_grad():
            return unet(**unet_inputs(unet)).sample
    finally:
        detach(unet)


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv-xl")
    make_tiny_pipeline(root / "sdxl", "sdxl")
    unet = make_tiny_unet("sdxl")
    return root, unet, SkipLayout.from_unet(unet)


@pytest.mark.parametrize("kind, kernel, down_ratio, prefix, dim_ratio, out_channels", [
    ("sd15", 3, 1.0, "0.", 1.0, 256),
    ("sd15", 1, 0.5, "model.0.", 1.0, 256),
    ("sdxl", 3, 1.0, "0.", 2.0, 320),  # the official SDXL controllers' pre-hint width
])
def test_official_control_checkpoint_reproduces_outputs(request, tmp_path, kind, kernel, down_ratio, prefix,
                                                        dim_ratio, out_channels):
    root, unet, layout = request.getfixturevalue("tiny" if kind == "sd15" else "tiny_xl")
    official = _official_csc(layout, kernel, down_ratio, dim_ratio=dim_ratio, out_channels=out_channels)
    state = {prefix + k: v for k, v in official.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    cond = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h = official.pre_hint_blocks(cond)
        hints = []
        for blk in official.dense_hint_blocks:
            h = blk(h)
            hints.append(h)
    n = layout.num_skips

    def edit(m, skip):  # official: skip + scale * (hint + T_m(skip + hint)), hints reversed = decoder order
        hint = hints[::-1][m].repeat(skip.shape[0], 1, 1, 1)
        return skip + hint + official.lsc_tuner_blocks[m].tuner_op(skip + hint)

    want = _reference_output(unet, layout, edit)
    plain = _reference_output(unet, layout, lambda m, x: x)
    res = convert_checkpoint(tmp_path, tmp_path / "out", model=str(root / kind), condition="canny")
    assert res.method == "csc" and res.config["hint_kernel"] == kernel and res.config["ratio"] == 1 / down_ratio
    assert (res.config["pre_hint_dim_ratio"], res.config["pre_hint_out_channels"]) == (dim_ratio, out_channels)
    assert res.tuned_skips == list(range(n))
    tuner = load_tuner(tmp_path / "out", unet=unet)
    got = _ours_output(unet, tuner, cond)
    assert (want - plain).abs().max() > 1e-2  # the control does something
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    meta = json.loads((tmp_path / "out" / "tuner_config.json").read_text())
    assert meta["source_format"] == "scepter-control" and meta["config"]["condition"] == "canny"


def _sc_state(layout, ratio=1.0, fmt="scepter", js=None):
    n = layout.num_skips
    g = torch.Generator().manual_seed(5)
    state, ops = {}, {}
    for m in (js if js is not None else range(n)):
        c = layout.channels[n - 1 - m]
        op = _TunerOp(c, int(c * ratio))
        with torch.no_grad():
            for p in op.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        ops[m] = op
        for k, v in op.state_dict().items():
            if fmt == "scepter":
                state[f"model.lsc_identity.{m}.tuner_op.{k}"] = v
            elif fmt == "swift":
                state[f"model.lsc_identity.{m}.scetuner_default.tuner_op.{k}"] = v
            else:  # ms-swift on a diffusers U-Net: up_blocks.{b}.resnets.{r}
                b = next(i for i, g_ in enumerate(layout.up_block_skips) if (n - 1 - m) in g_)
                group = layout.up_block_skips[b]  # encoder order; resnet r pops group[-1 - r]
                r = len(group) - 1 - group.index(n - 1 - m)
                state[f"base_model.up_blocks.{b}.resnets.{r}.scetuner_default.tuner_op.{k}"] = v
    return state, ops


@pytest.mark.parametrize("fmt, suffix", [("scepter", ".bin"), ("swift", ".safetensors"), ("diffusers", ".bin")])
def test_official_t2i_checkpoints_reproduce_outputs(tiny, tmp_path, fmt, suffix):
    root, unet, layout = tiny
    js = [0, 3, 4, 11] if fmt == "scepter" else None
    state, ops = _sc_state(layout, ratio=0.25, fmt=fmt, js=js)
    src = tmp_path / f"adapter_model{suffix}"
    if suffix == ".bin":
        torch.save(state, src)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(src))
    want = _reference_output(unet, layout, lambda m, x: x + ops[m](x) if m in ops else x)
    res = convert_checkpoint(src, tmp_path / "out", model=str(root / "sd15"))
    assert res.method == "sc" and res.config["ratio"] == 4.0 and res.tuned_skips == sorted(ops)
    got = _ours_output(unet, load_tuner(tmp_path / "out", unet=unet))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_named_architecture_layout(tmp_path):
    from scedit_cli.architectures import build_unet

    layout = SkipLayout.from_unet(build_unet("sd15"))
    state, _ = _sc_state(layout, ratio=0.1)
    torch.save(state, tmp_path / "pytorch_model.bin")
    res = convert_checkpoint(tmp_path / "pytorch_model.bin", tmp_path / "out", arch="sd15")
    assert round(res.trainable_parameters / 1e6, 2) == 1.98  # paper: SC-Tuner ratio 10 on SD 1.5
    # The model card: an architecture is no base model id, so none in the front matter and BASE in the examples.
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "scedit" and card.data.tags == ["scedit", "sc-tuner"]
    assert card.data.base_model is None and "scedit sample -m BASE -t USER/REPO" in card.text
    assert f"`{tmp_path / 'pytorch_model.bin'}` (scepter) with `scedit convert`" in card.text
    assert f"| trainable parameters | {res.trainable_parameters:,} (1.98M) |" in card.text
    assert "# SC-Tuner for `sd15` models" in card.text and "| base model | any `sd15` model" in card.text
    with pytest.raises(SceditError, match="decoder layer 2 of this base has 640"):
        convert_checkpoint(tmp_path / "pytorch_model.bin", tmp_path / "o2", arch="sdxl")


class Evil:  # not a tensor: weights_only=True must refuse it
    pass


def test_bad_checkpoints_are_refused_clearly(tiny, tmp_path):
    root, unet, layout = tiny
    model = str(root / "sd15")
    torch.save({"x": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(SceditError, match="refused to load: the pickle holds more than tensors.*weights_only=True"):
        convert_checkpoint(tmp_path / "evil.bin", tmp_path / "o", model=model)
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(SceditError, match="not SCEdit tuner weights, e.g. 'foo.weight'"):
        convert_checkpoint(tmp_path / "other.bin", tmp_path / "o", model=model)
    (tmp_path / "x.onnx").write_bytes(b"1")
    with pytest.raises(SceditError, match="unknown checkpoint type '.onnx'"):
        convert_checkpoint(tmp_path / "x.onnx", tmp_path / "o", model=model)
    with pytest.raises(SceditError, match="checkpoint not found"):
        convert_checkpoint(tmp_path / "missing.bin", tmp_path / "o", model=model)
    official = _official_csc(layout, 3)
    torch.save({"0." + k: v for k, v in official.state_dict().items()}, tmp_path / "ctr.bin")
    with pytest.raises(SceditError, match="pass --condition"):
        convert_checkpoint(tmp_path / "ctr.bin", tmp_path / "o", model=model)
    two = {f"{i}.{k}": v for i in (0, 1) for k, v in official.state_dict().items()}
    torch.save(two, tmp_path / "two.bin")
    with pytest.raises(SceditError, match="holds 2 controllers"):
        convert_checkpoint(tmp_path / "two.bin", tmp_path / "o", model=model, condition="canny")
    with pytest.raises(SceditError, match="exactly one of --model"):
        convert_checkpoint(tmp_path / "ctr.bin", tmp_path / "o")
    # A controller for another base (SDXL-shaped, 9 skips) against this SD 1.5-shaped base.
    sdxl_layout = SkipLayout.from_unet(make_tiny_unet("sdxl"))
    torch.save({"0." + k: v for k, v in _official_csc(sdxl_layout, 3).state_dict().items()}, tmp_path / "xl.bin")
    with pytest.raises(SceditError, match="base it was trained on"):
        convert_checkpoint(tmp_path / "xl.bin", tmp_path / "o", model=model, condition="canny")
    # a scedit tuner (folder, or its lone safetensors with our metadata) needs no conversion
    convert_checkpoint(tmp_path / "ctr.bin", tmp_path / "ours", model=model, condition="canny")
    for ours in (tmp_path / "ours", tmp_path / "ours" / "tuner.safetensors"):
        with pytest.raises(SceditError, match=f"^{ours}: already a scedit tuner; use it as it is"):
            convert_checkpoint(ours, tmp_path / "o", model=model)
    assert not (tmp_path / "o").exists()


def test_convert_cli(tiny, tmp_path, capsys):
    from scedit_cli.cli import main

    root, unet, layout = tiny
    state, _ = _sc_state(layout)
    torch.save(state, tmp_path / "pytorch_model.bin")
    main(["convert", str(tmp_path / "pytorch_model.bin"), "-o", str(tmp_path / "t"), "-m", str(root / "sd15"), "--json"])
    assert json.loads(capsys.readouterr().out)["method"] == "sc"
    card = (tmp_path / "t" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: scedit" in card and f"-m {root / 'sd15'} -t USER/REPO" in card
    torch.save({"x": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "evil.bin"), "-o", str(tmp_path / "t2"), "--arch", "sd15"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "Traceback" not in err


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _converted_a_with_b_waiting(tiny, tmp_path):
    """tmp_path/t converted from a.bin; b.bin (half as wide) ready to convert over it."""
    root, unet, layout = tiny
    torch.save(_sc_state(layout)[0], tmp_path / "a.bin")
    torch.save(_sc_state(layout, ratio=0.5)[0], tmp_path / "b.bin")
    out = tmp_path / "t"
    convert_checkpoint(tmp_path / "a.bin", out, model=str(root / "sd15"))
    return out, _files(out)


def test_convert_refuses_an_existing_tuner_unless_overwrite(tiny, tmp_path, capsys):
    from scedit_cli.cli import main

    root, unet, layout = tiny
    out, before = _converted_a_with_b_waiting(tiny, tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "b.bin"), "-o", str(out), "-m", str(root / "sd15")])
    line = capsys.readouterr().err.strip()
    assert e.value.code == 2 and line.count("\n") == 0 and str(out) in line and "--overwrite" in line
    assert _files(out) == before, "the tuner is untouched"
    # a folder of other files is never replaced, --overwrite or not
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SceditError, match="not a tuner folder"):
        convert_checkpoint(tmp_path / "b.bin", tmp_path / "other", model=str(root / "sd15"), overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    main(["convert", str(tmp_path / "b.bin"), "-o", str(out), "-m", str(root / "sd15"), "--overwrite"])
    assert json.loads((out / "tuner_config.json").read_text())["converted_from"] == str(tmp_path / "b.bin")
    assert load_tuner(out, unet=unet).config.ratio == 2.0  # half as wide as a.bin's (ratio 1)


def test_sigint_while_convert_overwrites_leaves_the_old_tuner(tiny, tmp_path):
    """A real SIGINT, sent by the process to itself once the new weights are on disk (before the
    config): exit 130, the old tuner folder byte-identical, no temporary left."""
    import os
    import signal
    import subprocess
    import sys

    root = tiny[0]
    out, before = _converted_a_with_b_waiting(tiny, tmp_path)
    script = (
        "import os, signal, sys, safetensors.torch as st\n"
        "save = st.save_file\n"
        "def interrupted(*a, **k):\n"
        "    save(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "st.save_file = interrupted\n"
        "from scedit_cli.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    p = subprocess.run([sys.executable, "-c", script, "convert", str(tmp_path / "b.bin"), "-o", str(out),
                        "-m", str(root / "sd15"), "--overwrite"], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"},
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # see test_interrupt
    assert p.returncode == 130, p.stderr[-2000:]
    assert "interrupted" in p.stderr and "Traceback" not in p.stderr
    assert _files(out) == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.bin", "b.bin", "t"]
