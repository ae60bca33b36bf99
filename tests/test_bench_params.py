"""`scedit bench params`: the paper's parameter figures, counted on meta-device models."""

from __future__ import annotations

import json
import subprocess
import sys

from scedit_cli.bench.params import EXACT, param_rows

PAPER_EXACT = {
    ("Table 1", "Full"): 859.52,
    ("Table 1", "LoRA r=64"): 23.94,
    ("Table 1", "LoRA r=6"): 2.24,
    ("Table 1", "SCEdit"): 19.68,
    ("Table 1", "SCEdit ratio 10"): 1.98,
    ("Table 2", "ControlNet"): 364.23,
    ("Table 2", "T2I-Adapter"): 77.37,
    ("Table 2", "SCEdit k=1"): 28.82,
    ("Table 2", "SCEdit k=3"): 99.11,
    ("Table 5a", "ratio 5"): 3.94,
    ("Table 5b", "skips {0,11}"): 3.48,
    ("Table 5b", "skips {0,3,6,9,11}"): 7.79,
    ("Table 5c", "Conv"): 22.13,
    ("Table 6b", "skips {0,3,4,6,7,9,11}"): 17.14,
}


def test_every_exact_row_matches_the_paper_to_001m():
    rows = {(r.table, r.setting): r for r in param_rows()}
    for key, paper in PAPER_EXACT.items():
        row = rows[key]
        assert row.kind == EXACT
        assert round(row.params / 1e6, 2) == paper, (key, row.params)
    # Rows we cannot build exactly say so, with their difference.
    assert rows[("Table 2", "ControlNet-XS")].kind == "closest"
    assert rows[("Table 2", "ControlNet-XS")].diff_m is not None
    assert rows[("Table 5c", "ResPrefix")].params is None


def test_bench_params_cli_json():
    proc = subprocess.run(
        [sys.executable, "-m", "scedit_cli.cli", "bench", "params", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["all_exact_rows_match"] is True
    assert len(data["rows"]) >= 25
