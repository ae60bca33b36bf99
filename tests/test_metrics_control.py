"""Controllability metrics: edge F1, colour-map error, and `scedit eval --control` over a sample folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scedit_cli.metrics.control import color_error, edge_f1, evaluate_controls, seg_error


def _edges(shift=0, size=64):
    a = np.zeros((size, size), np.uint8)
    a[10:50, 20 + shift] = 255
    a[30, 5 + shift:60] = 255
    return a


def test_edge_f1_identical_is_one_and_drops_when_shifted():
    assert edge_f1(_edges(), _edges())["f1"] == 1.0
    shifted = edge_f1(_edges(), _edges(shift=3))["f1"]
    assert shifted < 0.6
    # With a tolerance of 3 pixels the shifted map matches again.
    assert edge_f1(_edges(), _edges(shift=3), tolerance=3)["f1"] > 0.95
    assert edge_f1(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))["f1"] == 1.0
    assert edge_f1(_edges(), np.zeros((64, 64), np.uint8))["f1"] == 0.0


def test_edge_f1_square_footprint_matches_diagonal_steps():
    dots = np.zeros((16, 16), np.uint8)
    dots[4, 4] = dots[10, 7] = 255
    diagonal = np.roll(np.roll(dots, 1, axis=0), 1, axis=1)
    assert edge_f1(dots, diagonal, tolerance=1, footprint="square")["f1"] == 1.0
    assert edge_f1(dots, diagonal, tolerance=1)["f1"] == 0.0  # a radius-1 disk has no corners
    with pytest.raises(Exception, match="footprint"):
        edge_f1(dots, dots, footprint="star")


def test_color_and_seg_errors():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert color_error(a, a) == 0.0
    assert color_error(a, a + 51) == pytest.approx(0.2)
    b = a.copy()
    b[:4] = 0
    assert seg_error(a, a) == 0.0 and seg_error(a, b) == pytest.approx(0.5)


def _photo(seed, size=64):
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, size - 20, 2)
        img[y:y + 20, x:x + 20] = rng.integers(40, 255, 3)
    return Image.fromarray(img)


def test_eval_control_over_a_sample_folder(tmp_path):
    from typer.testing import CliRunner

    from scedit_cli.cli import app

    out = tmp_path / "samples"
    out.mkdir()
    src = _photo(0)
    src.save(tmp_path / "control.png")
    # Image 0 follows its control exactly; image 1 is the same picture shifted by 4 pixels.
    src.save(out / "000.png")
    Image.fromarray(np.roll(np.asarray(src), 4, axis=1)).save(out / "001.png")
    rows = []
    for i in range(2):
        controls = [{"condition": "canny", "image": str(tmp_path / "control.png"), "scale": 1.0, "input": "image"},
                    {"condition": "color", "image": str(tmp_path / "control.png"), "scale": 1.0, "input": "image"}]
        rows.append({"file": f"{i:03d}.png", "prompt": "p", "seed": i, "controls": controls})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    res = evaluate_controls(out)
    f1 = {r.file: r.metrics["edge_f1"] for r in res.rows if r.condition == "canny"}
    assert f1["000.png"] == 1.0 and f1["001.png"] < 0.5
    col = {r.file: r.metrics["color_mae"] for r in res.rows if r.condition == "color"}
    assert col["000.png"] == 0.0
    assert res.summary["canny"]["count"] == 2

    r = CliRunner().invoke(app, ["eval", "--control", "--generated", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["control"]["summary"]["canny"]["edge_f1"] == pytest.approx(np.mean(list(f1.values())))
