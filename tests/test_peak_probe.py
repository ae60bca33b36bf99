"""`benchmarks/peak_probe.py` (where a training step's memory peak falls) on the tests' tiny SD 1.5 U-Net, CPU."""

from __future__ import annotations

import json

import pytest
from bench_scripts import exit_code_as_main, load_script
from tiny_models import tiny_unet_config


@pytest.fixture(scope="module")
def peak_probe():
    return load_script("peak_probe")


@pytest.fixture
def tiny_config(tmp_path):
    config = tmp_path / "unet.json"
    config.write_text(json.dumps(tiny_unet_config("sd15")))
    return config


def test_probe_of_sc_and_lora_on_a_cpu(tmp_path, peak_probe, tiny_config):
    out = peak_probe.main(["--device", "cpu", "--unet-config", str(tiny_config), "--resolution", "64",
                           "--batch", "1", "--warmup", "1", "--methods", "SCEdit,LoRA r=64",
                           "--out", str(tmp_path / "probe.json")])
    assert json.loads((tmp_path / "probe.json").read_text()) == json.loads(json.dumps(out))
    assert out["command"].startswith("python benchmarks/peak_probe.py --device cpu")
    sc, lora = out["methods"]["SCEdit"], out["methods"]["LoRA r=64"]
    for r in (sc, lora):
        assert "error" not in r, r
        # the peak over the step is read from the counters at every block boundary, forward and backward
        assert r["boundaries"] > 50 and r["top_intervals"]
        assert all(i["transient_gib"] >= 0 and i["peak_gib"] <= r["peak_gib"] for i in r["top_intervals"])
        # at the peak at least what is at rest and what the forward left alive are held
        fe = r["forward_end"]
        assert r["peak_gib"] >= fe["parameters_and_optimizer_gib"] + fe["made_alive_gib"]
        assert 0 < fe["saved_gib"] <= fe["made_alive_gib"]
    # SCEdit saves only the decoder's activations and trains far fewer parameters than LoRA r=64
    assert sc["forward_end"]["saved_gib"] < lora["forward_end"]["saved_gib"]
    assert sc["peak_gib"] < lora["peak_gib"]


def test_a_method_that_fails_is_reported_and_the_exit_code_is_1(tmp_path, monkeypatch, tiny_config):
    import scedit_cli.bench.runner as runner

    def broken(spec, factory, settings):
        raise RuntimeError("no memory left")

    monkeypatch.setattr(runner, "setup_method", broken)
    argv = ["--device", "cpu", "--unet-config", str(tiny_config), "--methods", "SCEdit",
            "--out", str(tmp_path / "probe.json")]
    assert exit_code_as_main("peak_probe", argv, monkeypatch) == 1
    assert json.loads((tmp_path / "probe.json").read_text())["methods"] == {
        "SCEdit": {"error": "RuntimeError: no memory left"}}
