"""Every PIL mode becomes correct 8-bit RGB (`images.to_rgb8`), in data loading, prepare, sample controls and
eval: a 16-bit grayscale PNG reads as its 8-bit copy does, not as a nearly white image."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scedit_cli.errors import SceditError
from scedit_cli.images import to_gray8, to_rgb8


def rgb(image: Image.Image) -> np.ndarray:
    out = to_rgb8(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out)


def gray_values(image: Image.Image) -> list[int]:
    a = rgb(image)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    return a[..., 0].ravel().tolist()


SIXTEEN = np.array([[0, 128, 129, 257, 32768, 65535]], dtype=np.uint16)
SIXTEEN_8BIT = [0, 0, 1, 1, 128, 255]  # round(v / 257)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_16_bit_greyscale_is_scaled_not_clipped(mode):
    data = SIXTEEN.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    assert gray_values(Image.frombytes(mode, (6, 1), data)) == SIXTEEN_8BIT


def test_32_bit_integer_holds_16_bit_samples_and_refuses_others():
    assert gray_values(Image.fromarray(SIXTEEN.astype(np.int32))) == SIXTEEN_8BIT
    for bad in (-1, 65536):
        with pytest.raises(ValueError, match="outside the 16-bit range"):
            to_rgb8(Image.fromarray(np.array([[0, bad]], dtype=np.int32)))


def test_float_is_0_to_1_and_refuses_others():
    assert gray_values(Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32))) == [0, 64, 128, 255]
    for bad in (1.5, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="not 0..1 intensities"):
            to_rgb8(Image.fromarray(np.array([[0.5, bad]], dtype=np.float32)))


def test_alpha_is_composited_on_white():
    rgba = Image.fromarray(np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], dtype=np.uint8), "RGBA")
    assert rgb(rgba).tolist() == [[[10, 20, 30], [255, 255, 255], [127, 127, 127]]]
    la = Image.fromarray(np.array([[[100, 255], [100, 0], [0, 128]]], dtype=np.uint8), "LA")
    assert gray_values(la) == [100, 255, 127]
    assert rgb(Image.new("RGBa", (1, 1), (0, 0, 0, 128))).tolist() == [[[127, 127, 127]]]
    assert gray_values(Image.new("La", (1, 1), (0, 128))) == [127]


def test_palette_and_colour_key_transparency():
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    for x in range(3):
        p.putpixel((x, 0), x)
    assert rgb(p).tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]
    p.info["transparency"] = 1
    assert rgb(p).tolist() == [[[255, 0, 0], [255, 255, 255], [0, 0, 255]]]
    pa = p.convert("PA")
    assert rgb(pa).tolist() == [[[255, 0, 0], [255, 255, 255], [0, 0, 255]]]
    keyed = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8))
    keyed.info["transparency"] = (1, 2, 3)
    assert rgb(keyed).tolist() == [[[255, 255, 255], [4, 5, 6]]]


def test_other_modes_convert_the_pillow_way():
    one = Image.frombytes("1", (8, 1), bytes([0b10100000]))
    assert gray_values(one) == [255, 0, 255, 0, 0, 0, 0, 0]
    assert gray_values(Image.fromarray(np.array([[0, 7, 255]], dtype=np.uint8))) == [0, 7, 255]
    assert rgb(Image.new("CMYK", (1, 1), (0, 255, 0, 0))).tolist() == [[[255, 0, 255]]]
    assert rgb(Image.new("RGBX", (1, 1), (1, 2, 3, 0))).tolist() == [[[1, 2, 3]]]
    same = Image.new("RGB", (2, 2), (9, 8, 7))
    assert to_rgb8(same) is same
    assert to_gray8(Image.frombytes("I;16", (6, 1), SIXTEEN.astype("<u2").tobytes())).mode == "L"


def _png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG, written byte by byte (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def test_16_bit_png_files(tmp_path):
    arr = np.zeros((1, 2, 3), np.uint16)
    arr[0, 0] = [65535, 32896, 257]
    with Image.open(_png16(tmp_path / "rgb16.png", arr)) as im:
        assert rgb(im).tolist() == [[[255, 128, 1], [0, 0, 0]]]
    Image.fromarray(SIXTEEN).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16" and gray_values(im) == SIXTEEN_8BIT


def scene8() -> np.ndarray:
    """A grey 8-bit picture with edges: a bright square on a darker gradient."""
    yy, xx = np.mgrid[:48, :48]
    img = (40 + xx * 2).astype(np.uint8)
    img[12:36, 12:36] = 220
    return img


def write_pair(folder: Path) -> tuple[Path, Path]:
    """The same picture as an 8-bit and as a 16-bit greyscale PNG (v16 = v8 * 257, exactly the same image)."""
    folder.mkdir(parents=True, exist_ok=True)
    img = scene8()
    Image.fromarray(img).save(folder / "a8.png")
    Image.fromarray(img.astype(np.uint16) * 257).save(folder / "b16.png")
    with Image.open(folder / "b16.png") as im:
        assert im.mode == "I;16"
    return folder / "a8.png", folder / "b16.png"


def test_prepare_canny_on_a_16_bit_png_matches_its_8_bit_copy(tmp_path):
    from scedit_cli.prepare.runner import PrepareConfig, run_prepare

    write_pair(tmp_path / "in")
    out = tmp_path / "out"
    run_prepare(PrepareConfig("canny", str(tmp_path / "in"), out, params={"low": 50, "high": 100}))
    rows = {Path(r["image"]).stem: r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    maps = {k: np.asarray(to_rgb8(Image.open(out / r["canny"]))) for k, r in rows.items()}  # 1-bit PNGs
    assert maps["a8"].max() == 255, "the 8-bit picture has edges"
    assert (maps["b16"] == maps["a8"]).all()


def test_training_data_reads_a_16_bit_png_like_its_8_bit_copy(tmp_path):
    from scedit_cli.data import load_training_data
    from scedit_cli.recipes import DataSection

    write_pair(tmp_path / "d")
    rows = [{"image": "a8.png", "text": "x"}, {"image": "b16.png", "text": "x"}]
    (tmp_path / "d" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_training_data(DataSection(source=str(tmp_path / "d"), resolution=48), [])
    a, b = ds[(0, 0)]["pixel_values"], ds[(0, 1)]["pixel_values"]
    assert a.min() < -0.5 and (a == b).all()


def test_sample_controls_and_eval_read_a_16_bit_png_like_its_8_bit_copy(tmp_path):
    from scedit_cli.metrics.fid import _ImageFiles
    from scedit_cli.sampling.controls import ControlSpec, load_control_map

    a8, b16 = write_pair(tmp_path)
    maps = [np.asarray(load_control_map(ControlSpec("canny", p), 48, 48)) for p in (a8, b16)]
    assert maps[0].max() == 255 and (maps[0] == maps[1]).all()
    given = [np.asarray(load_control_map(ControlSpec("canny", p, is_map=True), 48, 48)) for p in (a8, b16)]
    assert (given[0] == given[1]).all()
    files = _ImageFiles([a8, b16])
    assert (files[0] == files[1]).all()
    Image.fromarray(np.full((4, 4), 3.0, np.float32)).save(tmp_path / "bad.tif")
    with pytest.raises(SceditError, match=r"bad\.tif: cannot read control image .*not 0\.\.1 intensities"):
        load_control_map(ControlSpec("canny", tmp_path / "bad.tif"), 48, 48)


def test_contact_sheet_scales_down_and_with_upscale_up():
    from scedit_cli.sampling.grid import contact_sheet

    small = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    assert contact_sheet(small, cols=2, cell=8, pad=1).size == (4 * 2 + 3, 4 + 2)  # never enlarged by default
    sheet = contact_sheet(small, cols=2, cell=8, pad=1, upscale=True, resample=Image.NEAREST)
    assert sheet.size == (8 * 2 + 3, 8 + 2)
    assert sheet.getpixel((1, 1)) == sheet.getpixel((8, 8)) == (255, 0, 0) and sheet.getpixel((10, 1)) == (0, 0, 255)
    big = Image.new("RGB", (32, 16))
    assert contact_sheet([big], cell=8, pad=0).size == (8, 4)


def test_resize_crop_covers_then_crops():
    from scedit_cli.images import resize_crop

    img = Image.new("RGB", (40, 20))
    out, (top, left), resized = resize_crop(img, (10, 10))
    assert out.size == (10, 10) and resized == (20, 10) and (top, left) == (0, 5)  # centre crop
    rng = np.random.default_rng(0)
    lefts = {resize_crop(img, 10, center=False, rng=rng)[1][1] for _ in range(30)}
    assert lefts <= set(range(11)) and len(lefts) > 1  # random crops stay inside the resized image
