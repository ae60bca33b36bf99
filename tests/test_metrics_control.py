"""Controllability metrics (edge F1, HED SSIM, depth RMSE, seg mIoU, pose PCK, colour error) on maps with
known values, and `scedit eval --control` over a sample folder: its report files, tiny real detectors, and
missing detector weights."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from scedit_cli.errors import SceditError
from scedit_cli.metrics.control import evaluate_controls
from scedit_cli.metrics.control_maps import SegTotals, color_error, depth_rmse, edge_f1, seg_iou, ssim
from scedit_cli.metrics.pose import KEYPOINT_COLORS, pose_keypoints, pose_pck


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


def test_color_error():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert color_error(a, a) == 0.0
    assert color_error(a, a + 51) == pytest.approx(0.2)


def test_ssim_is_one_for_identical_maps_and_matches_skimage():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = (rng.random((40, 48)) * 255).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    blurred = np.asarray(Image.fromarray(a).resize((24, 20)).resize((48, 40)))
    for b in (blurred, 255 - a, np.clip(a.astype(int) + 40, 0, 255).astype(np.uint8)):
        want = structural_similarity(a / 255.0, b / 255.0, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
        assert ssim(a, b) == pytest.approx(want, abs=1e-9)
    assert ssim(a, blurred) < 0.9 and ssim(a, 255 - a) < 0
    # PIL images (RGB grey maps, as detectors write them) give the same value as the arrays.
    assert ssim(Image.fromarray(a).convert("RGB"), Image.fromarray(blurred).convert("RGB")) == pytest.approx(ssim(a, blurred))
    with pytest.raises(SceditError, match="at least 11x11"):
        ssim(a[:8], a[:8])


def test_depth_rmse_normalises_each_map_to_0_255():
    ramp = np.tile(np.arange(64, dtype=np.uint8), (16, 1))
    assert depth_rmse(ramp, ramp) == 0.0
    # Relative depth: a map and its affine rescaling are the same depth after min-max normalisation.
    assert depth_rmse(ramp, (ramp * 2 + 50).astype(np.uint8)) == pytest.approx(0.0, abs=1e-9)
    near_far = np.zeros((8, 8), np.uint8)
    near_far[:, 4:] = 200
    assert depth_rmse(near_far, 255 - near_far) == pytest.approx(255.0)  # every pixel off by the full range
    flat = np.full((8, 8), 90, np.uint8)
    assert depth_rmse(near_far, flat) == pytest.approx(np.sqrt(0.5 * 255**2))  # flat -> 0 everywhere


def _seg_map(classes: np.ndarray) -> np.ndarray:
    from scedit_cli.conditions.palette import ADE20K_PALETTE

    return np.asarray(ADE20K_PALETTE, np.uint8)[classes]


def test_seg_miou_over_present_classes_and_over_the_dataset():
    cls = np.zeros((8, 8), int)
    cls[:, 4:] = 2  # left half class 0, right half class 2
    ref = _seg_map(cls)
    miou, inter, union = seg_iou(ref, ref)
    assert miou == 1.0 and union == {0: 32, 2: 32}
    miou, inter, union = seg_iou(ref, _seg_map(np.zeros((8, 8), int)))
    assert miou == pytest.approx((0.5 + 0.0) / 2) and inter == {0: 32, 2: 0} and union == {0: 64, 2: 32}
    # A colour blended at a class boundary (bilinear resize) takes the nearest palette colour's class.
    soft = ref.copy()
    soft[0, 0] = (123, 119, 121)
    assert seg_iou(ref, soft)[0] == 1.0
    totals = SegTotals()
    totals.add(*seg_iou(ref, ref)[1:])
    totals.add(inter, union)
    assert totals.miou() == pytest.approx(((32 + 32) / (32 + 64) + 32 / (32 + 32)) / 2)


def _draw_pose(people, size=256):
    """A pose map drawn by controlnet-aux's own OpenPose renderer; people: lists of 18 (x, y) in 0..1 or None."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.open_pose.util import Keypoint, draw_bodypose

    canvas = np.zeros((size, size, 3), np.uint8)
    for kps in people:
        canvas = draw_bodypose(canvas, [None if k is None else Keypoint(*k) for k in kps])
    return canvas


def _person(dx=0.0, missing=()):
    base = [(0.5, 0.15), (0.5, 0.3), (0.38, 0.3), (0.33, 0.45), (0.3, 0.6), (0.62, 0.3), (0.67, 0.45),
            (0.7, 0.6), (0.42, 0.6), (0.42, 0.78), (0.42, 0.95), (0.58, 0.6), (0.58, 0.78), (0.58, 0.95),
            (0.46, 0.12), (0.54, 0.12), (0.42, 0.14), (0.58, 0.14)]
    return [None if i in missing else (x / 2 + dx, y) for i, (x, y) in enumerate(base)]


def test_pose_keypoints_read_back_from_a_rendered_openpose_map():
    person = _person(0.0)
    found = pose_keypoints(_draw_pose([person]))
    assert sorted(k for k, _, _ in found) == list(range(18))
    for k, x, y in found:
        assert abs(x - int(person[k][0] * 256)) <= 1 and abs(y - int(person[k][1] * 256)) <= 1
    assert len(KEYPOINT_COLORS) == 18


def test_pose_pck_counts_keypoints_within_the_threshold():
    two = _draw_pose([_person(0.0), _person(0.5)])
    assert pose_pck(two, two).pck == 1.0 and pose_pck(two, two).reference == 36
    near = _draw_pose([_person(0.02), _person(0.52)])  # 5 px off: within 0.05 x 256 = 12.8 px
    assert pose_pck(two, near).pck == 1.0
    assert pose_pck(two, near, threshold=0.01).pck == 0.0
    one = _draw_pose([_person(0.0, missing=(4, 7))])  # one person, both wrists missing
    m = pose_pck(two, one)
    assert (m.matched, m.reference, m.generated) == (16, 36, 16) and m.pck == pytest.approx(16 / 36)
    empty = np.zeros_like(two)
    assert pose_pck(empty, empty).pck == 1.0 and pose_pck(empty, two).pck == 0.0


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

    res = evaluate_controls(out, report_dir=tmp_path / "report", worst=1)
    f1 = {r.file: r.metrics["edge_f1"] for r in res.rows if r.condition == "canny"}
    assert f1["000.png"] == 1.0 and f1["001.png"] < 0.5
    col = {r.file: r.metrics["color_mae"] for r in res.rows if r.condition == "color"}
    assert col["000.png"] == 0.0
    assert res.summary["canny"]["count"] == 2

    # Report: per-image CSV, summary JSON, worst-cases sheet (the shifted image is the worst of both).
    import csv

    with open(res.report["per_image_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["condition"]) for r in rows] == [("000.png", "canny"), ("000.png", "color"),
                                                          ("001.png", "canny"), ("001.png", "color")]
    assert float(rows[2]["edge_f1"]) == f1["001.png"] and rows[1]["edge_f1"] == "" and float(rows[1]["color_mae"]) == 0.0
    summary = json.loads((tmp_path / "report" / "control_summary.json").read_text())
    assert summary["summary"]["canny"]["edge_f1"] == pytest.approx(np.mean(list(f1.values())))
    assert summary["worst"] == [{"condition": "canny", "file": "001.png", "edge_f1": f1["001.png"]},
                                {"condition": "color", "file": "001.png", "color_mae": col["001.png"]}]
    with Image.open(res.report["worst_png"]) as sheet:  # two rows of map | regenerated map | image, 64 px each
        assert sheet.width >= 3 * 64 + 4 * 2 and sheet.height == 14 + 2 * (14 + 64 + 2) + 2

    r = CliRunner().invoke(app, ["eval", "--control", "--generated", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["control"]["summary"]["canny"]["edge_f1"] == pytest.approx(np.mean(list(f1.values())))
    for kw, msg in (({"worst": -1}, "--worst -1"), ({"pose_threshold": 2.0}, "--pose-threshold 2.0")):
        with pytest.raises(SceditError, match=msg):
            evaluate_controls(out, **kw)
    # Default report folder: beside the sample folder, never inside it.
    assert data["control"]["report"]["summary_json"] == str(tmp_path / "samples-control" / "control_summary.json")
    assert not (out / "control_summary.json").exists() and (tmp_path / "samples-control" / "control_worst.png").is_file()


# --- learned detectors through their real loaders (tiny random weights, as test_prepare_detectors) ---------


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    """ControlNetHED.pth (full architecture, random weights) and a tiny UperNet ADE20K folder."""
    import warnings

    import torch
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    folder = tmp_path_factory.mktemp("annotators")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.hed import ControlNetHED_Apache2
    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), folder / "ControlNetHED.pth")
    cfg = UperNetConfig(
        backbone_config=ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                       out_features=["stage1", "stage2", "stage3", "stage4"]),
        hidden_size=16, auxiliary_in_channels=32, auxiliary_channels=8, num_labels=150,
    )
    UperNetForSemanticSegmentation(cfg).save_pretrained(folder / "upernet-convnext-small")
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder / "upernet-convnext-small")
    return folder


def _sample_folder(root, images: dict[str, Image.Image], control: Image.Image, conditions):
    out = root / "samples"
    out.mkdir(parents=True)
    control.save(root / "photo.png")
    rows = []
    for name, im in images.items():
        im.save(out / name)
        rows.append({"file": name, "prompt": "p", "seed": 0, "controls": [
            {"condition": c, "image": str(root / "photo.png"), "scale": 1.0, "input": "image"} for c in conditions]})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_hed_ssim_and_seg_miou_through_tiny_real_detectors(tmp_path, detector_weights):
    photo = _photo(3)
    other = _photo(9)
    out = _sample_folder(tmp_path, {"same.png": photo, "other.png": other}, photo, ["hed", "seg"])
    res = evaluate_controls(out, annotator_weights=detector_weights, detect_resolution=64,
                            report_dir=tmp_path / "rep", worst=2)
    m = {(r.file, r.condition): r.metrics for r in res.rows}
    # The generated image is the control photo itself: the detector gives the reference map back exactly.
    assert m[("same.png", "hed")]["hed_ssim"] == pytest.approx(1.0, abs=1e-9)
    assert m[("same.png", "seg")]["seg_miou"] == 1.0
    assert m[("other.png", "hed")]["hed_ssim"] < 0.99
    assert res.summary["seg"]["count"] == 2 and 0 <= res.summary["seg"]["seg_miou_dataset"] <= 1
    assert not res.not_measured
    summary = json.loads((tmp_path / "rep" / "control_summary.json").read_text())
    assert summary["worst"][0] == {"condition": "hed", "file": "other.png", "hed_ssim": m[("other.png", "hed")]["hed_ssim"]}


def test_missing_detector_weights_name_the_file(tmp_path):
    photo = _photo(3)
    out = _sample_folder(tmp_path, {"a.png": photo}, photo, ["canny", "depth", "pose"])
    res = evaluate_controls(out)  # no --annotator-weights, empty HF cache: said, not dropped
    assert set(res.summary) == {"canny"}
    assert "'depth' needs dpt_hybrid-midas-501f0c75.pt from https://huggingface.co/lllyasviel/Annotators" in res.not_measured["depth"]
    assert "'pose' needs body_pose_model.pth" in res.not_measured["pose"]
    with pytest.raises(SceditError, match=r"'depth' needs dpt_hybrid-midas-501f0c75.pt .* not in " + str(tmp_path)):
        evaluate_controls(out, annotator_weights=tmp_path)  # weights folder given: a missing file is an error


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SCEDIT_SLOW_TESTS"), reason="builds MiDaS DPT-Hybrid and OpenPose on CPU (~1 min); set SCEDIT_SLOW_TESTS=1")
def test_depth_rmse_and_pose_pck_through_real_format_detectors(tmp_path):
    import torch

    from test_prepare_detectors import _controlnet_aux, _strided

    midas = _controlnet_aux("midas.api")
    body, hand, face = _controlnet_aux("open_pose.body"), _controlnet_aux("open_pose.hand"), _controlnet_aux("open_pose.face")
    with torch.device("meta"):
        dpt = midas.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
        models = body.bodypose_model(), hand.handpose_model(), face.FaceNet()
    w = tmp_path / "w"
    w.mkdir()
    torch.save(_strided(dpt.state_dict()), w / "dpt_hybrid-midas-501f0c75.pt")
    torch.save(_strided(models[0].state_dict(), strip_first=True), w / "body_pose_model.pth")
    torch.save(_strided(models[1].state_dict(), strip_first=True), w / "hand_pose_model.pth")
    torch.save(_strided(models[2].state_dict()), w / "facenet.pth")
    photo = _photo(3)
    out = _sample_folder(tmp_path, {"same.png": photo}, photo, ["depth", "pose"])
    res = evaluate_controls(out, annotator_weights=w, detect_resolution=128)
    m = {r.condition: r.metrics for r in res.rows}
    assert m["depth"]["depth_rmse"] == 0.0 and m["pose"]["pose_pck"] == 1.0
