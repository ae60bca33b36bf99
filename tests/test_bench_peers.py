"""`benchmarks/bench_peers.py` (our SC-Tuner against ms-swift's SCETuning): the driver and our side, on CPU.

CI has no ms-swift (it is installed into an environment of its own, benchmarks/README.md), so the swift
side is not run here; what it is given (the skip channels in decoder order) is checked against the
configuration ms-swift's README gives for SD 1.5.
"""

from __future__ import annotations

import json
import sys

import pytest
from bench_scripts import load_script
from tiny_models import tiny_unet_config

from scedit_cli.architectures import build_unet


@pytest.fixture(scope="module")
def bench_peers():
    return load_script("bench_peers")


def test_swift_is_given_sd15s_skip_channels_in_decoder_order(bench_peers):
    assert bench_peers.swift_dims(build_unet("sd15", "meta")) == [1280] * 5 + [640] * 3 + [320] * 4


def test_our_side_runs_in_its_own_process_with_fp16_autocast(tmp_path, bench_peers, monkeypatch):
    # fp16 autocast and the gradient scaler: the path a GPU run takes, here on the CPU
    config = tmp_path / "unet.json"
    config.write_text(json.dumps(tiny_unet_config("sd15")))
    out = tmp_path / "peers"
    monkeypatch.setattr(sys, "argv", ["bench_peers.py"])
    bench_peers.main(["--sides", "ours-lean", "--unet-config", str(config), "--resolution", "64", "--rounds", "1",
                      "--steps", "2", "--warmup", "1", "--threads", "1", "--precision", "fp16", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    side = result["sides"]["ours-lean"]
    (run,) = result["runs"]["ours-lean"]
    assert side["steps_timed"] == 2 and len(run["losses"]) == 4  # warm-up, 2 timed, 1 accounted
    assert side["trainable_params"] > 0 and side["saved_bytes"] > 0 and side["peak_bytes"] > 0
    assert result["settings"]["precision"] == "fp16" and result["ratios"] == {}
    assert run["torch_threads"] == 1
