"""`scedit bench params`: the paper's parameter figures, counted on meta-device models."""

from __future__ import annotations

import json

import pytest

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


@pytest.fixture(scope="module")
def all_rows():
    return param_rows()


def test_every_exact_row_matches_the_paper_to_001m(all_rows):
    rows = {(r.table, r.setting): r for r in all_rows}
    for key, paper in PAPER_EXACT.items():
        row = rows[key]
        assert row.kind == EXACT
        assert round(row.params / 1e6, 2) == paper, (key, row.params)
    # Rows we cannot build exactly say so, with their difference.
    assert rows[("Table 2", "ControlNet-XS")].kind == "closest"
    assert rows[("Table 2", "ControlNet-XS")].diff_m is not None
    assert rows[("Table 5c", "ResPrefix")].params is None


def test_bench_params_cli_json(all_rows, monkeypatch):
    from typer.testing import CliRunner

    from scedit_cli.bench import params
    from scedit_cli.cli import app

    # The command prints what `param_rows` counts (checked above); counted once for this module.
    monkeypatch.setattr(params, "param_rows", lambda: all_rows)
    res = CliRunner().invoke(app, ["bench", "params", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["all_exact_rows_match"] is True
    assert len(data["rows"]) == len(all_rows) >= 25
    assert [r["setting"] for r in data["rows"] if r["table"] == "SDXL" and r["paper_m"] is None] == \
        ["SCEdit", "SCEdit k=1", "SCEdit k=3"]


def test_sdxl_rows_have_no_paper_figure_and_count_by_hand(all_rows):
    from scedit_cli.bench.params import NO_PAPER

    rows = {r.setting: r for r in all_rows if r.table == "SDXL"}
    assert set(rows) == {"SCEdit", "SCEdit k=1", "SCEdit k=3"}
    assert all(r.kind == NO_PAPER and r.paper_m is None and r.diff_m is None and r.ok for r in rows.values())
    skips = [320] * 4 + [640] * 3 + [1280] * 2  # SDXL's 9 skips: conv_in + 3 at 320, 3 at 640, 2 at 1280
    sc = sum(2 * c * c + 2 * c for c in skips)  # W_down, W_up and their biases, ratio 1
    pre = [3, 32, 32, 64, 64, 192, 192, 320]  # official SDXL pre-hint: widths x2, 320 out
    pre_hint = sum(a * b * 9 + b for a, b in zip(pre, pre[1:]))
    chain = list(zip([320] + skips, skips))  # dense cascade: 320 -> skip 0 -> skip 1 -> ...

    def cascade(k):
        return sum(a * b * k * k + b for a, b in chain)

    assert rows["SCEdit"].params == sc
    assert rows["SCEdit k=1"].params == sc + pre_hint + cascade(1)
    assert rows["SCEdit k=3"].params == sc + pre_hint + cascade(3)
