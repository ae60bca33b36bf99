"""`scedit bench sampling` end to end on a tiny U-Net (the CLI runs the real SD 1.5 architecture)."""

from __future__ import annotations

import pytest
import torch

from scedit_cli.bench.sampling import GOALS_PCT, VARIANTS, bench_sampling
from scedit_cli.errors import SceditError
from tiny_models import make_tiny_unet


def test_sampling_benchmark_tiny_end_to_end():
    bench = bench_sampling(unet=make_tiny_unet("sd15"), resolution=64, steps=3, batch=2, repeats=2, device="cpu")
    res = bench.to_dict()
    assert [r.variant for r in bench.rows] == list(VARIANTS) and res["rows"] == bench.row_dicts()
    rows = {r["variant"]: r for r in res["rows"]}
    assert list(rows) == list(VARIANTS)
    assert rows["plain"]["overhead_pct"] == 0.0
    for r in rows.values():
        assert len(r["runs"]) == 2 and all(t > 0 for t in r["runs"]) and r["cpu_seconds_per_image"] > 0
        assert r["seconds_per_image"] == pytest.approx(sorted(r["runs"])[0] / 2 + sorted(r["runs"])[1] / 2, abs=1e-3)
    # Hint encoders run once per run (per batch of images), never per denoising step.
    assert rows["csc1"]["hint_encoder_calls"] == 2 and rows["csc2"]["hint_encoder_calls"] == 4
    assert rows["sc"]["hint_encoder_calls"] == 0
    assert rows["controlnet"]["extra_params_m"] > 0 and rows["csc2"]["extra_params_m"] > rows["csc1"]["extra_params_m"] > 0
    # Overheads are each row's median seconds per image against the plain U-Net's, and the goals follow them.
    # Computed from the unrounded medians: the JSON rounds seconds to 1e-4, which is ~1% of a tiny run.
    plain = bench.rows[0].seconds_per_image
    for row in bench.rows:
        assert rows[row.variant]["overhead_pct"] == pytest.approx(100 * (row.seconds_per_image / plain - 1), abs=0.01)
    assert res["goals_pct"] == GOALS_PCT == {"csc1": 5.0, "csc2": 10.0}
    assert res["csc1_within_goal"] is (rows["csc1"]["overhead_pct"] <= 5.0)
    assert res["csc2_within_goal"] is (rows["csc2"]["overhead_pct"] <= 10.0)
    # Operators per denoising step: the tuners' are counted, the hint encoders' (once per image) are not;
    # the sampling edit runs 4 kernels per skip whatever the tuners (on a CPU the skips are not stacked).
    plain_kernels = rows["plain"]["kernels_per_step"]
    for variant in ("sc", "csc1", "csc2"):
        assert rows[variant]["kernels_per_step"] - plain_kernels == 12 * 4, variant
    assert rows["controlnet"]["kernels_per_step"] > rows["csc2"]["kernels_per_step"]
    assert rows["csc1"]["kernel_overhead_pct"] == pytest.approx(100 * (rows["csc1"]["kernels_per_step"] / plain_kernels - 1), abs=0.01)
    assert all(r["ops_per_step"] >= r["kernels_per_step"] > 0 for r in rows.values())
    assert (res["dtype"], res["steps"], res["batch"], res["repeats"], res["resolution"]) == ("float32", 3, 2, 2, 64)
    assert res["device"] == "cpu" and res["torch_threads"] == torch.get_num_threads()


def test_sampling_benchmark_bad_settings():
    with pytest.raises(SceditError, match="multiple of 64"):
        bench_sampling(unet=make_tiny_unet("sd15"), resolution=100, device="cpu")
    with pytest.raises(SceditError, match="sd15 or sd21"):
        bench_sampling(arch="sdxl", resolution=64, device="cpu")
    with pytest.raises(SceditError, match="unknown benchmark variant"):
        bench_sampling(unet=make_tiny_unet("sd15"), resolution=64, device="cpu", variants=("lora",))
