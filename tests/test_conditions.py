"""Condition maps checked against direct OpenCV/numpy computations on real images."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from scedit_cli.conditions import CONDITIONS, compute_condition, compute_condition_maps, record_rng
from scedit_cli.conditions.canny import CannyRandomRange
from scedit_cli.conditions.masks import inpaint_mask, outpaint_mask
from scedit_cli.conditions.palette import ADE20K_PALETTE, colorize_ade20k
from scedit_cli.errors import SceditError
from scedit_cli.images import to_rgb8

REAL = {
    "astronaut": skimage.data.astronaut,  # 512x512 RGB
    "coffee": skimage.data.coffee,  # 400x600 RGB (non-square)
    "camera": skimage.data.camera,  # 512x512 grayscale
    "logo": skimage.data.logo,  # 500x500 RGBA
}


def _pil(name: str) -> Image.Image:
    return Image.fromarray(REAL[name]())


def _rgb(name: str) -> np.ndarray:
    return np.asarray(_pil(name).convert("RGB"))


@pytest.mark.parametrize("name", list(REAL))
def test_canny_inference_matches_cv2_100_200(name):
    out = compute_condition("canny", _pil(name))
    expected = cv2.Canny(_rgb(name), 100, 200)
    arr = np.asarray(out)
    assert out.mode == "RGB" and out.size == _pil(name).size
    assert np.array_equal(arr[:, :, 0], expected) and np.array_equal(arr[:, :, 2], expected)
    assert 0.01 < (expected > 0).mean() < 0.5  # a real edge map, not blank or saturated


def test_canny_training_thresholds_are_seeded_and_in_range():
    img = _pil("astronaut")
    low, high = CannyRandomRange().sample(record_rng(7, "astronaut"))
    assert 50 <= low < 100 and 200 <= high < 350
    out = np.asarray(compute_condition("canny", img, rng=record_rng(7, "astronaut")))[:, :, 0]
    assert np.array_equal(out, cv2.Canny(_rgb("astronaut"), low, high))
    # a different record key draws other thresholds (over a few keys at least one differs)
    draws = {CannyRandomRange().sample(record_rng(7, f"k{i}")) for i in range(5)}
    assert len(draws) > 1


def test_canny_explicit_thresholds_override_rng():
    out = np.asarray(compute_condition("canny", _pil("coffee"), rng=record_rng(0, "x"), params={"low": "30", "high": "90"}))
    assert np.array_equal(out[:, :, 0], cv2.Canny(_rgb("coffee"), 30, 90))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_color_matches_cv2_resizes(name):
    rgb = _rgb(name)
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC)
    expected = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    out = compute_condition("color", _pil(name))
    assert out.size == (w, h) and np.array_equal(np.asarray(out), expected)
    # a 64x colour map has at most (h//64)*(w//64) distinct colours
    assert len(np.unique(expected.reshape(-1, 3), axis=0)) <= (h // 64) * (w // 64)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "logo"])
def test_compact_maps_are_the_rgb_maps_in_fewer_bits(name):
    """What `scedit prepare` stores: canny as 1 bit per pixel, colour as a palette; to_rgb8 gives the RGB maps back."""
    rng_a, rng_b = record_rng(3, name), record_rng(3, name)
    edges = compute_condition_maps("canny", _pil(name), rng=rng_a, compact=True)["canny"]
    assert edges.mode == "1"
    assert np.array_equal(np.asarray(to_rgb8(edges)), np.asarray(compute_condition("canny", _pil(name), rng=rng_b)))
    colours = compute_condition_maps("color", _pil(name), compact=True)["color"]
    assert colours.mode == "P" and "transparency" not in colours.info
    assert np.array_equal(np.asarray(to_rgb8(colours)), np.asarray(compute_condition("color", _pil(name))))
    for im in (edges, colours):  # and through a PNG file, as prepare writes them
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1)
        assert np.array_equal(np.asarray(to_rgb8(Image.open(buf))), np.asarray(to_rgb8(im)))


def test_compact_colour_map_with_over_256_colours_stays_rgb():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    out = compute_condition_maps("color", img, params={"ratio": 1}, compact=True)["color"]
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(img))


def test_color_tiny_image_is_one_cell():
    out = np.asarray(compute_condition("color", Image.fromarray(_rgb("astronaut")[:40, :30])))
    assert out.shape == (40, 30, 3) and len(np.unique(out.reshape(-1, 3), axis=0)) == 1


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_inpaint_cutout_is_image_with_mask_zeroed(name):
    rgb = _rgb(name)
    maps = compute_condition_maps("inpaint", _pil(name), rng=record_rng(3, name))
    mask = np.asarray(maps["inpaint_mask"])
    cut = np.asarray(maps["inpaint"])
    assert maps["inpaint_mask"].mode == "L" and set(np.unique(mask)) <= {0, 255}
    assert 0.005 < (mask > 0).mean() < 0.95
    expected = rgb.copy()
    expected[mask > 0] = 0
    assert np.array_equal(cut, expected)
    # same seed and key -> same mask; the generator alone reproduces it
    again = inpaint_mask(rgb.shape[0], rgb.shape[1], record_rng(3, name))
    assert np.array_equal(again, mask)


def test_inpaint_masks_vary_and_include_both_lama_kinds():
    masks = [inpaint_mask(256, 256, record_rng(0, f"m{i}")) for i in range(40)]
    assert len({m.tobytes() for m in masks}) == 40
    # LaMa box masks are unions of axis-aligned rectangles: every row/column profile is a step; irregular strokes are not.
    def is_boxes(m):
        filled = np.zeros_like(m)
        for y0, y1, x0, x1 in _components(m):
            filled[y0:y1, x0:x1] = 255
        return np.array_equal(filled, m)
    kinds = {is_boxes(m) for m in masks}
    assert kinds == {True, False}


def _components(m):
    n, labels, stats, _ = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8))
    return [(s[1], s[1] + s[3], s[0], s[0] + s[2]) for s in stats[1:]]


def test_inpaint_with_given_mask_and_errors():
    img = _pil("astronaut")
    m = np.zeros((512, 512), np.uint8)
    m[100:200, 50:300] = 255
    maps = compute_condition_maps("inpaint", img, params={"mask": Image.fromarray(m)})
    assert np.array_equal(np.asarray(maps["inpaint_mask"]), m)
    assert np.asarray(maps["inpaint"])[150, 100].sum() == 0 and np.array_equal(np.asarray(maps["inpaint"])[300], _rgb("astronaut")[300])
    with pytest.raises(SceditError, match="needs a mask"):
        compute_condition("inpaint", img)
    with pytest.raises(SceditError, match="does not match the image size"):
        compute_condition("inpaint", img, params={"mask": Image.new("L", (10, 10))})


def test_outpaint_fixed_sides_and_random():
    img = _pil("coffee")  # 600 x 400
    maps = compute_condition_maps("outpaint", img, params={"left": 0.25, "top": "0.1"})
    mask = np.asarray(maps["outpaint_mask"])
    expected = np.full((400, 600), 255, np.uint8)
    expected[40:, 150:] = 0
    assert np.array_equal(mask, expected)
    assert np.array_equal(np.asarray(maps["outpaint"]), np.where(expected[:, :, None] > 0, 0, _rgb("coffee")))
    rnd = outpaint_mask(400, 600, record_rng(1, "c"))
    assert rnd[200, 300] == 0 and (rnd > 0).any()  # centre kept, some border hidden
    with pytest.raises(SceditError, match="whole image"):
        compute_condition("outpaint", img, params={"left": 0.6, "right": 0.5})


def test_unknown_condition_and_unknown_setting():
    with pytest.raises(SceditError, match="unknown condition 'edges'; choose one of: canny"):
        compute_condition("edges", _pil("camera"))
    with pytest.raises(SceditError, match="has no setting 'lo'"):
        compute_condition("canny", _pil("camera"), params={"lo": 1})
    with pytest.raises(SceditError, match="must be an integer"):
        compute_condition("color", _pil("camera"), params={"ratio": "big"})


def test_every_paper_condition_is_registered():
    assert set(CONDITIONS) == {"canny", "depth", "hed", "seg", "pose", "color", "inpaint", "outpaint"}


def test_ade20k_palette_is_the_standard_one():
    from importlib.util import find_spec, module_from_spec, spec_from_file_location
    from pathlib import Path

    # controlnet-aux ships the mmseg ADE20K palette; ours must be identical. Its util.py is
    # loaded on its own: importing the package would load every detector (~5 s).
    util = Path(find_spec("controlnet_aux").origin).parent / "util.py"
    spec = spec_from_file_location("cnaux_util", util)
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert [list(c) for c in ADE20K_PALETTE] == mod.ade_palette()
    labels = np.array([[0, 1], [149, 2]])
    assert colorize_ade20k(labels).tolist() == [[list(ADE20K_PALETTE[0]), list(ADE20K_PALETTE[1])], [list(ADE20K_PALETTE[149]), list(ADE20K_PALETTE[2])]]


def test_condition_facts_come_from_the_registry():
    from PIL import Image

    from scedit_cli.conditions import CONDITIONS, MASKED_CONDITIONS, condition_channels, resize_filter

    assert MASKED_CONDITIONS == ("inpaint", "outpaint")
    assert {n: condition_channels(n) for n in CONDITIONS} == {
        "canny": 3, "depth": 3, "hed": 3, "seg": 3, "pose": 3, "color": 3, "inpaint": 4, "outpaint": 4}
    assert condition_channels("my_column_map") == 3  # a condition read from a dataset column
    assert [n for n in CONDITIONS if resize_filter(n) == Image.NEAREST] == ["seg", "pose"]
    assert resize_filter("canny", is_mask=True) == Image.NEAREST and resize_filter("unknown") == Image.BILINEAR
