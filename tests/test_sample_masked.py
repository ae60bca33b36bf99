"""Inpainting and outpainting in `scedit sample` / `compose` (4-channel CSC-Tuners) on the shipped toy base."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scedit_cli.cli import main
from scedit_cli.data import load_training_data
from scedit_cli.errors import SceditError
from scedit_cli.models import load_base
from scedit_cli.prepare.runner import PrepareConfig, run_prepare
from scedit_cli.recipes import DataSection
from scedit_cli.sampling import ControlSpec, SampleSettings, compose, sample
from scedit_cli.sampling.masked import MaskSpec, load_masked, parse_extend, parse_mask
from scedit_cli.toy import base_model_path
from scedit_cli.tuners import CSCTuner, CSCTunerConfig, SkipLayout, save_tuner
from tiny_models import randomize_

SIZE = 32  # the toy base's native size


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("masked")
    base = load_base(str(base_model_path()))
    layout = SkipLayout.from_unet(base.unet)
    tuners = {}
    for seed, (cond, ch) in enumerate((("inpaint", 4), ("outpaint", 4), ("canny", 3))):
        t = CSCTuner(CSCTunerConfig(hint_downscale=base.vae_scale_factor, hint_kernel=1, condition=cond,
                                    in_channels=ch), layout)
        randomize_(t, seed)
        tuners[cond] = save_tuner(t, root / cond, base=str(base_model_path()))
    rng = np.random.default_rng(0)
    for name, shape in (("photo", (SIZE, SIZE, 3)), ("wide", (40, 48, 3))):
        (root / name).mkdir()  # one image per folder: `scedit prepare` reads folders
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(root / name / f"{name}.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:20, 4:28] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:20]).save(root / "small_mask.png")
    return {"root": root, "base": base, "tuners": tuners, "photo": root / "photo" / "photo.png",
            "wide": root / "wide" / "wide.png"}


def _settings(**kw):
    kw.setdefault("steps", 2)
    kw.setdefault("guidance_scale", 5.0)
    return SampleSettings(**kw)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


# --- parsing and the condition tensor (no generation) --------------------------------------------


def test_parse_mask_and_extend():
    assert parse_mask("auto") == MaskSpec(None, 0) and parse_mask("auto:7") == MaskSpec(None, 7)
    assert parse_mask("m.png").path.name == "m.png"
    assert parse_extend("right=0.5, left=0.25") == (("left", 0.25), ("right", 0.5))
    for bad, msg in (("auto:x", "auto:SEED"), ("", "empty")):
        with pytest.raises(SceditError, match=msg):
            parse_mask(bad)
    for bad, msg in (("left", "SIDE=FRACTION"), ("middle=0.2", "SIDE=FRACTION"), ("left=a", "not a number"),
                     ("left=0", "must be > 0"), ("left=25", "<= 4"), ("left=0.1,left=0.2", "given twice")):
        with pytest.raises(SceditError, match=msg):
            parse_extend(bad)


@pytest.mark.parametrize("name", ["photo", "wide"])
def test_sampling_builds_the_training_tensor(toy, tmp_path, name):
    """`--mask auto` and `--mask` with prepare's own mask file give the tensor training reads from
    `scedit prepare --condition inpaint` data: same channels, order, range and mask convention; for an
    image at the output size bit for bit, for a larger one the same mask (nearest, same crop)."""
    photo = toy[name]
    prepared = tmp_path / "prepared"
    run_prepare(PrepareConfig("inpaint", str(photo.parent), prepared, seed=3))
    data = load_training_data(DataSection(source=str(prepared), resolution=SIZE), ["inpaint"])
    trained = data.load(0, 0, train=False)["conditions"][0]
    assert trained.shape == (4, SIZE, SIZE)
    hidden = trained[3] > 0.5
    assert set(trained[3].unique().tolist()) == {0.0, 1.0} and 0 < hidden.float().mean() < 1
    for mask in (MaskSpec(None, 3), MaskSpec(prepared / data.row(0)["inpaint_mask"])):
        got = load_masked(ControlSpec("inpaint", photo, mask=mask), SIZE, SIZE, 4)
        assert got.tensor.shape == (1, 4, SIZE, SIZE)
        assert torch.all(got.tensor[0, :3, hidden] == 0)  # hidden pixels are black in the cut-out
        if name == "photo":
            assert torch.equal(got.tensor[0], trained)
        else:  # training resized the prepared cut-out (bilinear), sampling masks the resized image (bicubic)
            assert torch.equal(got.tensor[0, 3], trained[3])
        input_panel, mask_panel = got.panels
        assert input_panel.size == mask_panel.size == (SIZE, SIZE)
    other = load_masked(ControlSpec("inpaint", photo, mask=MaskSpec(None, 4)), SIZE, SIZE, 4)
    assert not torch.equal(other.tensor[0, 3], trained[3])  # the seed picks the mask


# --- generation ----------------------------------------------------------------------------------


def test_inpaint_sample_with_mask_file_and_auto(toy, tmp_path):
    base, tuners, root = toy["base"], toy["tuners"], toy["root"]
    spec = ControlSpec("inpaint", toy["photo"], mask=MaskSpec(root / "mask.png"))
    r = sample(base, "a red circle", tmp_path / "file", tuners=[tuners["inpaint"]], controls=[spec],
               settings=_settings(seeds=(0, 1)))
    assert len(r.images) == 2 and _pixels(r.images[0]).shape == (SIZE, SIZE, 3)
    rec = json.loads((tmp_path / "file" / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["controls"][0]["mask"] == str(root / "mask.png")
    assert rec["settings"]["controls"][0]["mask_digest"]
    # The grid: input, mask, result for each image (2 rows of 3 cells of 32 px, 2 px padding).
    with Image.open(r.grid) as g:
        assert g.size == (3 * SIZE + 4 * 2, 2 * SIZE + 3 * 2)
        cells = np.asarray(g.convert("RGB"))
        mask_cell = cells[2:2 + SIZE, 4 + SIZE:4 + 2 * SIZE]
        assert np.array_equal(mask_cell[..., 0] > 127, np.asarray(Image.open(root / "mask.png")) > 127)
    auto = sample(base, "a red circle", tmp_path / "auto", tuners=[tuners["inpaint"]],
                  controls=[ControlSpec("inpaint", toy["photo"], mask=MaskSpec(None, 0))], settings=_settings())
    assert json.loads((tmp_path / "auto" / "manifest.jsonl").read_text())["controls"][0]["mask"] == "auto:0"
    # Another mask reaches the tuner: another image.
    assert np.abs(_pixels(auto.images[0]) - _pixels(r.images[0])).max() > 0


def test_outpaint_output_is_the_extended_canvas(toy, tmp_path):
    base, tuners = toy["base"], toy["tuners"]
    spec = ControlSpec("outpaint", toy["photo"], extend=parse_extend("left=0.25,right=0.5,top=0.1"))
    got = load_masked(spec, 56, 40, 4)
    cut, mask = got.tensor[0, :3], got.tensor[0, 3]
    inside = np.zeros((40, 56), bool)
    inside[8:40, 8:40] = True  # left 0.25 * 32 = 8 px, right 16 px, top 3.2 px -> at least 8 px, bottom 0
    assert np.array_equal(mask.numpy() == 0, inside) and torch.all(cut[:, ~torch.from_numpy(inside)] == 0)
    photo = np.asarray(Image.open(toy["photo"]).convert("RGB"), np.float32) / 255
    assert np.array_equal(cut[:, 8:40, 8:40].permute(1, 2, 0).numpy(), photo)
    r = sample(base, "a red circle", tmp_path / "out", tuners=[tuners["outpaint"]], controls=[spec], settings=_settings())
    assert _pixels(r.images[0]).shape == (40, 56, 3)
    assert json.loads((tmp_path / "out" / "manifest.jsonl").read_text())["settings"]["width"] == 56
    with Image.open(r.grid) as g:
        assert g.size == (3 * 56 + 4 * 2, 40 + 2 * 2)
    # --width/--height size the image inside the canvas; an inpainting tuner outpaints too (paper Fig. 10).
    r = sample(base, "a red circle", tmp_path / "area", tuners=[tuners["inpaint"]], controls=[spec],
               settings=_settings(width=16, height=24))
    assert _pixels(r.images[0]).shape == (24 + 8, 16 + 8 + 8, 3)


def test_inpaint_composes_with_another_control(toy, tmp_path):
    base, tuners, root = toy["base"], toy["tuners"], toy["root"]
    controls = [ControlSpec("inpaint", toy["photo"], mask=MaskSpec(root / "mask.png")),
                ControlSpec("canny", toy["photo"])]
    r = compose(base, "a red circle", tmp_path / "c", tuners=[tuners["inpaint"], tuners["canny"]], controls=controls,
                settings=_settings())
    alone = sample(base, "a red circle", tmp_path / "a", tuners=[tuners["inpaint"]], controls=controls[:1],
                   settings=_settings())
    assert r.extra["variants"] == [[0.5, 0.5]] and r.extra["hint_encoder_calls"] == 2
    assert np.abs(_pixels(r.images[0]) - _pixels(alone.images[0])).max() > 0
    with Image.open(r.grid) as g:
        assert g.size == (3 * SIZE + 4 * 2, SIZE + 2 * 2)  # input, mask, result


def test_masked_errors(toy, tmp_path):
    base, tuners, root = toy["base"], toy["tuners"], toy["root"]
    cases = [
        (ControlSpec("inpaint", toy["photo"]), "needs a mask: --mask MASK.png"),
        (ControlSpec("inpaint", toy["photo"], mask=MaskSpec(root / "nope.png")), "nope.png: mask image not found"),
        (ControlSpec("inpaint", toy["photo"], is_map=True, mask=MaskSpec()), "use --control inpaint:IMAGE"),
        (ControlSpec("outpaint", toy["photo"]), "needs margins: --extend"),
        (ControlSpec("inpaint", toy["photo"], mask=MaskSpec(root / "small_mask.png")), "mask is 32x20 but the image"),
    ]
    for spec, msg in cases:
        with pytest.raises(SceditError, match=msg):
            sample(base, "a cat", tmp_path / "o", tuners=[tuners["inpaint"]], controls=[spec], settings=_settings())
    assert not list((tmp_path / "o").glob("*.png"))


def _run(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    cap = capsys.readouterr()
    return e.value.code, cap.err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--control", "canny:{photo}", "--mask", "auto"], "--mask goes with --control inpaint:IMAGE"),
        (["--control", "inpaint:{photo}", "--extend", "left=0.2"], "--extend goes with --control outpaint:IMAGE"),
        (["--control", "outpaint:{photo}", "--extend", "left=0.2;right=0.1"], "SIDE=FRACTION"),
        (["--control", "inpaint:{photo}", "--mask", "{root}/small_mask.png"], "small_mask.png: mask is 32x20"),
    ],
)
def test_cli_errors_are_one_line(toy, tmp_path, capsys, extra, message):
    args = ["sample", "-m", str(base_model_path()), "-t", str(toy["tuners"]["inpaint"]), "-p", "a cat",
            "--steps", "1", "-o", str(tmp_path / "o")]
    code, err = _run(capsys, *args, *[a.format(photo=toy["photo"], root=toy["root"]) for a in extra])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
