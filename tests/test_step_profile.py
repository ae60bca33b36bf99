"""`benchmarks/step_profile.py` (where a training step's time goes) on the tests' tiny SD 1.5 U-Net."""

from __future__ import annotations

import json

import pytest
from bench_scripts import exit_code_as_main, load_script
from tiny_models import tiny_unet_config


@pytest.fixture(scope="module")
def step_profile():
    return load_script("step_profile")


@pytest.mark.parametrize("op, expected", [
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("aten::cudnn_convolution", "convolution"),
    ("aten::convolution_backward", "convolution"), ("mkldnn::_convolution_pointwise", "convolution"),
    ("aten::native_group_norm_backward", "norm"), ("aten::native_layer_norm", "norm"),
    ("aten::_scaled_dot_product_flash_attention", "attention"), ("aten::_flash_attention_backward", "attention"),
    ("aten::_foreach_norm", "optimizer"), ("aten::linalg_vector_norm", "optimizer"),
    ("Optimizer.step#AdamW.step", "optimizer"), ("autograd::engine::evaluate_function: MmBackward0", "autograd"),
    ("_NormBackward", "autograd"), ("_FrozenConv2d", "python functions"), ("aten::gelu_backward", "elementwise"),
    ("aten::mul", "elementwise"), ("aten::copy_", "copy"), ("aten::cat", "copy"),
    ("aten::view", "views and allocation"), ("aten::empty_strided", "views and allocation"), ("aten::mse_loss", "reduce"), ("cudaLaunchKernel", "other"),
])
def test_operator_categories(step_profile, op, expected):
    assert step_profile.category(op) == expected


def test_profile_of_a_tiny_training_step(tmp_path, step_profile):
    config = tmp_path / "unet.json"
    config.write_text(json.dumps(tiny_unet_config("sd15")))
    out = step_profile.main(["--device", "cpu", "--unet-config", str(config), "--resolution", "64", "--batch", "1",
                             "--warmup", "1", "--steps", "2", "--profile-steps", "1", "--methods", "SCEdit",
                             "--out", str(tmp_path / "p")])
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads(json.dumps(out))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = out["methods"]["SCEdit"]
    ph = r["phases"]
    assert 0 < ph["forward_ms"] < ph["step_ms"] and ph["after_forward_ms"] > 0
    cats = r["profile"]["categories"]
    assert cats["convolution"]["ms"] > 0 and cats["matmul"]["ms"] > 0 and cats["attention"]["calls"] > 0
    assert sum(c["ms"] for c in cats.values()) == pytest.approx(r["profile"]["total_ms"])
    # what the categories add up to is the profiled step's own time, not a multiple of it
    assert r["profile"]["total_ms"] < 3 * ph["step_ms"]


def test_a_method_that_fails_is_reported_and_the_exit_code_is_1(tmp_path, monkeypatch):
    import scedit_cli.bench.runner as runner

    def broken(spec, factory, settings):
        raise RuntimeError("no memory left")

    config = tmp_path / "unet.json"
    config.write_text(json.dumps(tiny_unet_config("sd15")))
    monkeypatch.setattr(runner, "setup_method", broken)
    argv = ["--device", "cpu", "--unet-config", str(config), "--methods", "SCEdit", "--out", str(tmp_path / "p")]
    assert exit_code_as_main("step_profile", argv, monkeypatch) == 1
    assert json.loads((tmp_path / "p.json").read_text())["methods"] == {
        "SCEdit": {"error": "RuntimeError: no memory left"}}
