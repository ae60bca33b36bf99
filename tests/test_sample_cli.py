"""`scedit sample` / `compose` command line: end to end, and every bad input is one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scedit_cli.cli import main
from scedit_cli.tuners import CSCTuner, CSCTunerConfig, SkipLayout, save_tuner
from tiny_models import make_tiny_pipeline, make_tiny_unet



@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    pipe = make_tiny_pipeline(root / "sd15")
    layout = SkipLayout.from_unet(pipe.unet)
    save_tuner(CSCTuner(CSCTunerConfig(hint_downscale=2, condition="canny"), layout), root / "canny")
    sdxl_layout = SkipLayout.from_unet(make_tiny_unet("sdxl"))
    save_tuner(CSCTuner(CSCTunerConfig(hint_downscale=2, condition="canny"), sdxl_layout), root / "canny_sdxl")
    save_tuner(CSCTuner(CSCTunerConfig(hint_downscale=8, condition="canny"), layout), root / "canny_f8")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(root / "photo.png")
    (root / "broken.png").write_bytes(b"this is not an image")
    (root / "empty.txt").write_text("\n\n")
    (root / "prompts.txt").write_text("a red circle\na blue square\n")
    return root


def _run(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_sample_end_to_end_json(files, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["sample", "-m", str(files / "sd15"), "--prompts", str(files / "prompts.txt"), "-t", str(files / "canny"),
            "--control", f"canny:{files / 'photo.png'}:0.8", "--steps", "2", "--seed", "5", "-b", "2",
            "-o", str(out), "--json"]
    main(args)
    summary = json.loads(capsys.readouterr().out)
    assert summary["generated"] == 2 and summary["hint_encoder_calls"] == 1
    rec = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["seed"] == 5 and rec["controls"][0] == {"condition": "canny", "image": str(files / "photo.png"),
                                                      "scale": 0.8, "input": "image"}
    assert rec["weights"] == [0.8] and (out / "grid.png").is_file()
    assert (files / "photo.png").is_file()


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("missing tuner", ["-t", "{root}/nope", "-p", "a cat"], "nope: tuner file not found"),
        ("other base", ["-t", "{root}/canny_sdxl", "-p", "a cat", "--control-map", "canny:{root}/photo.png"],
         "tuner was trained on a U-Net with 9 skips"),
        ("vae factor", ["-t", "{root}/canny_f8", "-p", "a cat", "--control-map", "canny:{root}/photo.png"],
         "downsamples by 8 but this base model's VAE downsamples by 2"),
        ("unknown condition", ["-t", "{root}/canny", "-p", "a cat", "--control", "blurp:{root}/photo.png"],
         "unknown condition 'blurp'; known conditions: canny"),
        ("no tuner for it", ["-p", "a cat", "--control", "depth:{root}/photo.png"],
         "no loaded CSC-Tuner was trained for 'depth'"),
        ("missing control", ["-t", "{root}/canny", "-p", "a cat"], "needs a 'canny' condition image"),
        ("unreadable control", ["-t", "{root}/canny", "-p", "a cat", "--control", "canny:{root}/broken.png"],
         "broken.png: cannot read control image"),
        ("absent control", ["-t", "{root}/canny", "-p", "a cat", "--control", "canny:{root}/absent.png"],
         "absent.png: control image not found"),
        ("empty prompts", ["--prompts", "{root}/empty.txt"], "empty.txt: prompts file holds no prompts"),
        ("no prompt", [], "give exactly one of --prompt and --prompts"),
        ("scheduler", ["-p", "a cat", "--scheduler", "warp"], "unknown scheduler 'warp'"),
        ("size", ["-p", "a cat", "--size", "30"], "--width 30: must be a positive multiple of 8"),
        ("model", ["-p", "a cat", "-m", "{root}/no_model"], "model file or folder not found"),
    ],
)
def test_bad_inputs_are_one_line_errors(files, tmp_path, capsys, case, extra, message):
    args = ["sample", "-m", str(files / "sd15"), "-o", str(tmp_path / "o"), "--steps", "1"]
    args += [a.format(root=files) for a in extra]
    code, out, err = _run(capsys, *args)
    assert code == 2, (case, err)
    assert message in err, (case, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not any((tmp_path / "o").glob("*.png"))


def test_compose_cli_sweep(files, tmp_path, capsys):
    save_tuner(CSCTuner(CSCTunerConfig(hint_downscale=2, condition="color"),
                        SkipLayout.from_unet(make_tiny_unet("sd15"))), tmp_path / "color")
    out = tmp_path / "sweep"
    main(["compose", "-m", str(files / "sd15"), "-p", "a cat", "-t", str(files / "canny"), "-t", str(tmp_path / "color"),
          "--control", f"canny:{files / 'photo.png'}", "--control", f"color:{files / 'photo.png'}",
          "--sweep", "4", "--steps", "1", "-o", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["generated"] == 4 and summary["variants"][1] == pytest.approx([2 / 3, 1 / 3])
    assert len(list(out.glob("00000_s0_v*.png"))) == 4
