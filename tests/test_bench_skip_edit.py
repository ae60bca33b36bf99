"""`benchmarks/bench_skip_edit.py` (the sampling skip edit alone, three ways) at tiny widths on the CPU."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load_script


@pytest.fixture(scope="module")
def bench_skip_edit():
    return load_script("bench_skip_edit")


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])  # fp16: what gpu_check.sh's `edit` stage runs
def test_every_variant_and_path_counted_and_timed(tmp_path, bench_skip_edit, dtype):
    out = bench_skip_edit.main(["--tiny", "--resolution", "64", "--repeats", "1", "--dtype", dtype,
                                "--out", str(tmp_path / "edit.json")])
    assert json.loads((tmp_path / "edit.json").read_text()) == out
    assert [r["variant"] for r in out["rows"]] == ["sc", "csc1", "csc2"]
    for r in out["rows"]:
        # the sampling paths launch fewer kernels than the tuners' autograd path, the stacked one fewest
        assert r["block_kernels"] <= r["skip_kernels"] < r["training_kernels"], r
        assert all(r[f"{p}_ms"] > 0 for p in ("block", "skip", "training"))
    # one stacked MLP per skip whatever the number of tuners; the autograd path grows with each condition
    assert len({r["block_kernels"] for r in out["rows"]}) == 1
    assert out["rows"][0]["training_kernels"] < out["rows"][2]["training_kernels"]
