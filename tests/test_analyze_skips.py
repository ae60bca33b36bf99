"""`scedit analyze skips`: skip removal, the feature probes, and the outputs on the shipped toy base."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scedit_cli.analysis import SkipAnalysisSettings, SkipRemoval, Variant, analyze_skips, removal_variants
from scedit_cli.analysis.skips import Probes
from scedit_cli.cli import main
from scedit_cli.models import load_base
from scedit_cli.toy import base_model_path
from scedit_cli.tuners import SkipLayout, attach, detach
from tiny_models import unet_inputs

PROMPT = "a red circle at the top left on a black background"


def test_variants_cover_each_skip_and_the_halves(tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)  # 12 skips, encoder downscale 1,1,1,2,2,2,4,4,4,8,8,8
    variants = removal_variants(layout, ("zero", "mean"))
    assert len(variants) == 2 * (12 + 3)
    by_name = {v.name: v.skips for v in variants if v.mode == "zero"}
    assert by_name["j4"] == (4,) and by_name["all"] == tuple(range(12))
    # High-resolution half: the first six encoder skips = the last six decoder layers.
    assert by_name["high-res-half"] == (6, 7, 8, 9, 10, 11) and by_name["low-res-half"] == (0, 1, 2, 3, 4, 5)
    assert all(layout.downscale[layout.decoder_to_encoder(j)] <= 2 for j in by_name["high-res-half"])


def test_removal_rows_zero_mean_and_untouched(tiny_unet):
    """Per batch row: a row without removal is exactly the plain U-Net's; removed skips are 0 / their mean."""
    layout = SkipLayout.from_unet(tiny_unet)
    inputs = unet_inputs(tiny_unet, batch=3)
    with torch.no_grad():
        plain = tiny_unet(**inputs).sample
    seen = {}

    def record(module, args, kwargs):
        seen.setdefault(id(module), []).append(kwargs["res_hidden_states_tuple"])

    removal = SkipRemoval(layout)
    removal.rows = [None, Variant("all", "zero", tuple(range(12))), Variant("j0", "mean", (0,))]
    attach(tiny_unet, [removal])
    hooks = [b.register_forward_pre_hook(record, with_kwargs=True) for b in tiny_unet.up_blocks]
    try:
        with torch.no_grad():
            edited = tiny_unet(**inputs).sample
    finally:
        for h in hooks:
            h.remove()
        detach(tiny_unet)
    assert torch.equal(edited[0], plain[0])
    assert not torch.allclose(edited[1], plain[1]) and not torch.allclose(edited[2], plain[2])
    # The hooks registered after attach see the edited skips: zeros in row 1; row 2's deepest skip
    # (j=0, encoder 11, first of the first up block's tuple is encoder 9..11 -> last) is constant per channel.
    first_block = seen[id(tiny_unet.up_blocks[0])][0]
    for skip in first_block:
        assert torch.count_nonzero(skip[1]) == 0
    j0 = first_block[-1][2]
    assert torch.allclose(j0, j0.mean((1, 2), keepdim=True).expand_as(j0))
    assert not torch.allclose(first_block[-2][2], first_block[-2][2].mean((1, 2), keepdim=True))


def test_probes_split_the_resnet_input_into_backbone_and_skip(tiny_unet):
    """The skip half of each up-block resnet's input is the skip with paper index j (checked against
    the skips the up blocks receive) for every j."""
    layout = SkipLayout.from_unet(tiny_unet)
    probes = Probes(tiny_unet, layout, map_steps={0})
    probes.start_call([0, 0])
    received = {}

    def record(block_index):
        def hook(module, args, kwargs):
            for enc, x in zip(layout.up_block_skips[block_index], kwargs["res_hidden_states_tuple"]):
                received[layout.num_skips - 1 - enc] = x
        return hook

    hooks = [b.register_forward_pre_hook(record(i), with_kwargs=True) for i, b in enumerate(tiny_unet.up_blocks)]
    try:
        with torch.no_grad():
            tiny_unet(**unet_inputs(tiny_unet, batch=2))
    finally:
        for h in hooks:
            h.remove()
        probes.remove()
    trace = probes.trace
    assert trace.timesteps == [10] and set(trace.output) == {0} and trace.hist[0].sum() == 2 * 4 * 16 * 16
    for j in range(layout.num_skips):
        x = received[j].double()
        m = trace.skip[(j, 0)]
        assert m.n == x.numel() and m.mean() == pytest.approx(float(x.mean()))
        assert m.std() == pytest.approx(float(x.std(unbiased=False)), rel=1e-6)
        skip_map, backbone_map = trace.maps[(j, 0)]
        assert np.allclose(skip_map, x[0].mean(0).float().numpy(), atol=1e-6)
        assert backbone_map.shape == skip_map.shape and trace.backbone[(j, 0)].n > 0


@pytest.fixture(scope="module")
def toy_base():
    base = load_base(str(base_model_path()))
    base.pipeline.set_progress_bar_config(disable=True)
    return base


def test_analyze_skips_on_the_toy_base(toy_base, tmp_path):
    settings = SkipAnalysisSettings(steps=3, modes=("zero",), batch_size=10, map_steps=2, seeds=(0, 1))
    r = analyze_skips(toy_base, PROMPT, tmp_path / "a", settings)
    data = json.loads((tmp_path / "a" / "skips.json").read_text())
    n = len(data["skips"])
    assert n == 6 and [s["j"] for s in data["skips"]] == list(range(6))
    assert data["settings"]["pipeline_calls"] == 2  # (1 + 9 variants) x 2 images in calls of 10
    removal = {row["name"]: row for row in data["removal"]}
    assert len(removal) == n + 3 and removal["all"]["skips"] == list(range(n))
    assert all(len(row["change_per_image"]) == 2 and 0 <= row["change"] <= 1 for row in removal.values())
    assert removal["all"]["change"] > 0.02  # removing every skip changes the image visibly
    assert data["unmodified_output_std"] > 0
    traj = data["trajectory"]
    assert len(traj["timesteps"]) == 3 and traj["timesteps"][0] > traj["timesteps"][-1]
    assert all(len(row["ratio"]) == 3 and all(v > 0 for v in row["skip_std"]) for row in traj["per_skip"])
    for key in ("change", "output_distribution", "trajectory", "ratio", "feature_maps"):
        with Image.open(r.files[key]) as im:
            assert im.size[0] > 100
    grids = sorted(p.name for p in (tmp_path / "a" / "removal").glob("*.png"))
    assert len(grids) == n + 3 and "zero-high-res-half.png" in grids
    with Image.open(tmp_path / "a" / "removal" / "zero-all.png") as g:
        assert g.size[1] > 2 * 128  # two rows of enlarged 32 px images under a title
    assert r.to_dict()["removal"][0]["name"] == "j0"


def test_unmodified_images_match_plain_sampling_and_batch_size_does_not_matter(toy_base, tmp_path):
    from scedit_cli.analysis.skips import change_scores, run_skip_analysis
    from scedit_cli.sampling import PromptSpec

    prompts = [PromptSpec(0, PROMPT)]
    one = run_skip_analysis(toy_base, prompts, SkipAnalysisSettings(steps=2, modes=("mean",), batch_size=3))
    many = run_skip_analysis(toy_base, prompts, SkipAnalysisSettings(steps=2, modes=("mean",), batch_size=10))
    plain = toy_base.pipeline(PROMPT, num_inference_steps=2, guidance_scale=7.5,
                              generator=torch.Generator("cpu").manual_seed(0)).images[0]
    for run in (one, many):
        assert np.abs(np.asarray(run.images[0][0], np.int16) - np.asarray(plain, np.int16)).max() <= 1
    assert np.allclose(change_scores(one.images), change_scores(many.images), atol=2e-3)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mode", "blur"], "--mode blur: choose zero and/or mean"),
        (["--steps", "2", "--map-steps", "3"], "--map-steps must be between 1 and --steps (2)"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--size", "30"], "--width 30: must be a positive multiple of 8"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main(["analyze", "skips", "-p", PROMPT, "-o", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_json(tmp_path, capsys):
    main(["analyze", "skips", "-p", PROMPT, "-o", str(tmp_path / "o"), "--steps", "2", "--mode", "mean",
          "--map-steps", "1", "-b", "10", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == str(base_model_path()) and len(summary["removal"]) == 9
    assert summary["files"]["json"] == str(tmp_path / "o" / "skips.json") and "trajectory" not in summary
