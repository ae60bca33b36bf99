"""`scedit bench table1` end to end on a tiny U-Net configuration (the same --unet-config users pass for
custom architectures): every method and ratio in the JSON, the chart written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from scedit_cli.bench.runner import run_table
from scedit_cli.bench.specs import TABLES, BenchSettings
from scedit_cli.cli import app
from scedit_cli.errors import SceditError
from tiny_models import tiny_unet_config

pytestmark = pytest.mark.slow  # run first: see conftest.py


@pytest.fixture
def tiny_config(tmp_path):
    p = tmp_path / "unet.json"
    p.write_text(json.dumps(tiny_unet_config("sd15")))
    return p


def test_bench_table1_tiny_end_to_end(tmp_path, tiny_config):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["bench", "table1", "--unet-config", str(tiny_config), "--resolution", "64",
                                   "--batch", "1", "--steps", "1", "--warmup", "0", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "table1.json").read_text())
    assert (out / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [r["label"] for r in data["rows"]]
    assert labels == [m.label for m in TABLES["table1"].methods]
    for r in data["rows"]:
        assert r["trainable_params"] > 0 and r["peak_bytes"] > 0 and r["step_time_s"] > 0
        assert r["memory_ratio"] is not None and r["time_ratio"] is not None
        in_paper = "recompute" not in r["label"]
        assert (r["paper_mem_ratio"] is not None and r["paper_time_ratio"] is not None) == in_paper
        assert r["train"] == {"recompute_feed_forward": not in_paper, "lean": True, "prepack": True}
    full = data["rows"][0]
    assert full["memory_ratio"] == pytest.approx(1.0) and full["time_ratio"] == pytest.approx(1.0)
    sc = next(r for r in data["rows"] if r["label"] == "SCEdit")
    assert sc["saved_encoder_bytes"] == 0 and full["saved_encoder_bytes"] > 0
    assert sc["memory_ratio"] < 1.0
    sc_ff = next(r for r in data["rows"] if r["label"] == "SCEdit + FF recompute")
    assert sc_ff["memory"]["saved_bytes"] < sc["memory"]["saved_bytes"]
    assert {(t["method"], t["versus"], t["metric"]) for t in data["targets"]} == {
        ("SCEdit", "LoRA r=64", "memory"), ("SCEdit", "Full", "memory"),
        ("SCEdit", "Full", "time"), ("SCEdit", "LoRA r=64", "time")}
    assert all(isinstance(t["met"], bool) for t in data["targets"])
    assert data["machine"]["cpu_count"] >= 1 and data["settings"]["resolution"] == 64


def test_bench_recompute_ff_applies_to_every_row(tmp_path, tiny_config):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["bench", "table5", "--unet-config", str(tiny_config), "--resolution", "64",
                                   "--steps", "1", "--warmup", "0", "--methods", "ratio 10", "--recompute-ff",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "table5.json").read_text())
    assert data["settings"]["recompute_feed_forward"] is True
    assert [r["train"]["recompute_feed_forward"] for r in data["rows"]] == [True] * 2
    assert "feed-forward recompute" in res.output


@pytest.mark.parametrize("switch", ["lean", "prepack"])
def test_bench_memory_switches_apply_to_every_row(tmp_path, tiny_config, switch):
    """--lean/--no-lean (fewer saved bytes) and --prepack/--no-prepack (reordered conv weights counted)."""
    memory = {}
    for on in (True, False):
        flag = f"--{switch}" if on else f"--no-{switch}"
        out = tmp_path / flag
        res = CliRunner().invoke(app, ["bench", "table5", "--unet-config", str(tiny_config), "--resolution", "64",
                                       "--steps", "1", "--warmup", "0", "--methods", "ratio 10", flag,
                                       "--out", str(out)])
        assert res.exit_code == 0, res.output
        data = json.loads((out / "table5.json").read_text())
        # The table's title wraps at the terminal's width: compare with the line breaks as spaces.
        assert data["settings"][switch] is on and f"{switch} {on}" in " ".join(res.output.split())
        assert [r["train"][switch] for r in data["rows"]] == [on] * 2
        memory[on] = [r["memory"] for r in data["rows"]]
    if switch == "lean":
        assert all(a["saved_bytes"] < b["saved_bytes"] for a, b in zip(memory[True], memory[False])), memory
    else:
        assert all(m["reordered_bytes"] > 0 for m in memory[True])
        assert [m["reordered_bytes"] for m in memory[False]] == [0, 0]


@pytest.mark.parametrize("kwargs, match", [
    ({"resolution": 60}, "multiple of"),
    ({"batch": 0}, "--batch"),
    ({"methods": ["nope"]}, "no such row"),
    ({"precision": "fp16"}, "needs a GPU"),
    ({"device": "cuda:7"}, "CUDA is not available"),
])
def test_bench_bad_inputs_are_one_line_errors(tiny_config, kwargs, match):
    s = BenchSettings(**{"unet_config": str(tiny_config), "resolution": 64, "steps": 1, "warmup": 0, **kwargs})
    if kwargs.get("device") == "cuda:7":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    with pytest.raises(SceditError, match=match) as e:
        run_table("table5", s)
    assert "\n" not in str(e.value)


def test_bench_cli_bad_unet_config_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    from scedit_cli.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "table5", "--unet-config", str(bad), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
