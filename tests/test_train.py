"""`scedit train`: every method trains end to end on tiny models; the loop's pieces behave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.training import StepBatch, compute_loss, make_noise_scheduler, train

pytestmark = pytest.mark.slow  # run first: see conftest.py

COND_METHODS = {"csc", "controlnet", "t2i-adapter", "controlnet-xs", "controllora"}



@pytest.fixture(scope="session")
def sd15(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd15")
    make_tiny_pipeline(path, "sd15")
    return path


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n=4)


def method_cfg(name: str) -> dict:
    cfg = {"name": name}
    if name in COND_METHODS:
        cfg["conditions"] = ["canny"]
    if name in ("lora", "controllora"):
        cfg["rank"] = 4
    if name == "controlnet-xs":
        cfg["size_ratio"] = 0.5  # the tiny U-Net's 8-channel blocks need a larger ratio than SD's 0.21
    if name == "csc":
        cfg["hint_kernel"] = 1
    return cfg


def _check_output(name: str, out: Path, sd15: Path):
    if name in ("sc", "csc"):
        from scedit_cli.tuners import load_tuner

        t = load_tuner(out / "tuner")
        assert t.method == name
        meta = json.loads((out / "tuner" / "tuner_config.json").read_text())
        assert meta["steps"] == 1 and meta["base_model"] == str(sd15)
    elif name == "full":
        from diffusers import UNet2DConditionModel

        UNet2DConditionModel.from_pretrained(out / "unet")
    elif name in ("lora", "controllora"):
        from diffusers import StableDiffusionPipeline

        folder = out / ("lora" if name == "lora" else "controllora")
        pipe = StableDiffusionPipeline.from_pretrained(sd15, safety_checker=None)
        pipe.load_lora_weights(folder)  # diffusers' own loader accepts the file
        assert any("lora" in n for n, _ in pipe.unet.named_parameters())
        if name == "controllora":
            assert (folder / "condition_encoder.safetensors").is_file()
    elif name == "controlnet":
        from diffusers import ControlNetModel

        ControlNetModel.from_pretrained(out / "controlnet")
    elif name == "t2i-adapter":
        from diffusers import T2IAdapter

        T2IAdapter.from_pretrained(out / "t2i_adapter")
    elif name == "controlnet-xs":
        from diffusers import UNetControlNetXSModel

        UNetControlNetXSModel.from_pretrained(out / "controlnet_xs")
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt")), "weights are written as safetensors only"


@pytest.mark.parametrize("name", ["sc", "csc", "full", "lora", "controlnet", "t2i-adapter", "controlnet-xs",
                                  "controllora"])
def test_each_method_trains_and_writes_its_output(name, sd15, dataset, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", sd15, dataset, method_cfg(name), tmp_path / "out",
                          train={"max_steps": 1})
    result = train(recipe)
    assert result.steps == 1 and result.final_loss is not None and result.final_loss == result.final_loss
    assert result.outputs
    _check_output(name, tmp_path / "out", sd15)
    assert (tmp_path / "out" / "checkpoints" / "step-00000001" / "trainable.safetensors").is_file()


def _eval_loss(recipe_path: Path, weights: Path | None) -> float:
    """MSE on the training image at 32 fixed (noise, timestep) draws: base (identity tuner) or trained."""
    from safetensors.torch import load_file

    from scedit_cli.data import load_training_data
    from scedit_cli.methods import build_method
    from scedit_cli.models import load_base
    from scedit_cli.recipes import load_recipe
    from scedit_cli.models import text_embeddings

    r = load_recipe(recipe_path)
    base = load_base(r.model.source)
    m = build_method(r.method_name, r.method)
    m.setup(base)
    if weights is not None:
        m.load_state_dict(load_file(weights))
    item = load_training_data(r.data, m.conditions).validation_items(1)[0]
    with torch.no_grad():
        lat = base.vae.encode(item["pixel_values"][None]).latent_dist.mean * base.vae.config.scaling_factor
        ehs, _ = text_embeddings(base, [item["caption"]] * 32, "cpu")
        conds = [c[None].repeat(32, 1, 1, 1) for c in item["conditions"]] or None
        batch = StepBatch(lat.repeat(32, 1, 1, 1), ehs, None, conds)
        return compute_loss(m, make_noise_scheduler(base), r.model.prediction_type, batch,
                            torch.Generator().manual_seed(1)).item()


def _overfit(method: dict, sd15, tmp_path, steps=60):
    # x0 ("sample") prediction: for one image the target is fixed, so memorising it shows
    # as a large, unambiguous drop even on a random-weight tiny U-Net.
    data = make_dataset(tmp_path / "one", n=1)
    recipe = write_recipe(tmp_path / "r.toml", sd15, data, method, tmp_path / "out",
                          train={"max_steps": steps, "batch_size": 8, "learning_rate": 3e-2, "max_grad_norm": 0.0},
                          model={"prediction_type": "sample"})
    result = train(recipe)
    losses = [v for _, v in result.losses]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    before = _eval_loss(recipe, None)
    after = _eval_loss(recipe, tmp_path / "out" / "tuner" / "tuner.safetensors")
    return first, last, before, after


def test_single_image_overfit_sc_lowers_the_loss(sd15, tmp_path):
    first, last, before, after = _overfit({"name": "sc"}, sd15, tmp_path)
    assert last < 0.75 * first, (first, last)
    assert after < 0.6 * before, (before, after)


def test_single_image_overfit_csc_lowers_the_loss(sd15, tmp_path):
    # Measured at 30 steps: training loss x0.49, loss at the 32 fixed draws x0.13 (the SC-Tuner keeps 60 steps:
    # at 30 it reached x0.65 / x0.51, too near the thresholds).
    first, last, before, after = _overfit({"name": "csc", "conditions": ["canny"], "hint_kernel": 1}, sd15, tmp_path,
                                          steps=30)
    assert last < 0.75 * first, (first, last)
    assert after < 0.6 * before, (before, after)


class _Oracle:
    """A 'method' that predicts a fixed tensor: lets the test see which target the loss uses."""

    def __init__(self, fn):
        self.fn = fn

    def predict(self, noisy, t, ehs, added=None, conds=None):
        return self.fn(noisy, t)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_target_follows_the_prediction_type(prediction_type):
    from scedit_cli.models import BaseModel
    from tiny_models import make_tiny_unet

    base = BaseModel.from_unet(make_tiny_unet(), prediction_type=prediction_type)
    sched = make_noise_scheduler(base)
    latents = torch.randn(3, 4, 8, 8)
    batch = StepBatch(latents, torch.zeros(3, 5, 32))

    # Recompute the same draws: noise then timesteps from the same generator.
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (3,), generator=g)
    target = {"epsilon": noise, "v_prediction": sched.get_velocity(latents, noise, t), "sample": latents}[prediction_type]
    loss = compute_loss(_Oracle(lambda x, tt: target), sched, prediction_type, batch, torch.Generator().manual_seed(5))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    wrong = {"epsilon": "sample", "v_prediction": "epsilon", "sample": "epsilon"}[prediction_type]
    loss = compute_loss(_Oracle(lambda x, tt: target), sched, wrong, batch, torch.Generator().manual_seed(5))
    assert loss.item() > 1e-3


def test_sd21_v_prediction_is_read_from_the_scheduler(tmp_path, dataset):
    make_tiny_pipeline(tmp_path / "sd21", "sd21", prediction_type="v_prediction")
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "sd21", dataset, {"name": "sc"}, tmp_path / "out",
                          train={"max_steps": 1}, model={"arch": "sd21"})
    train(recipe)
    meta = json.loads((tmp_path / "out" / "tuner" / "tuner_config.json").read_text())
    assert meta["prediction_type"] == "v_prediction"


def test_sdxl_trains_with_its_added_conditions(tmp_path, dataset, monkeypatch):
    from diffusers import UNet2DConditionModel

    make_tiny_pipeline(tmp_path / "sdxl", "sdxl")
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "sdxl", dataset, {"name": "sc"}, tmp_path / "out",
                          train={"max_steps": 1}, model={"arch": "sdxl"})
    seen = []
    forward = UNet2DConditionModel.forward

    def recording(self, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in (kwargs.get("added_cond_kwargs") or {}).items()})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", recording)
    result = train(recipe)
    assert result.steps == 1 and (tmp_path / "out" / "tuner" / "tuner.safetensors").is_file()
    # the training step's U-Net call got SDXL's added conditions: the pooled text embeds and the time ids
    assert len(seen) == 1 and set(seen[0]) == {"text_embeds", "time_ids"}
    assert seen[0]["text_embeds"].shape == (2, 32) and seen[0]["text_embeds"].abs().sum() > 0
    ids = seen[0]["time_ids"]
    assert ids.shape == (2, 6)
    assert ids[:, :2].tolist() == [[40, 48]] * 2  # the dataset images' original size (h, w)
    assert ids[:, 4:].tolist() == [[32, 32]] * 2  # the training resolution


def test_logging_checkpoints_and_validation_outputs(sd15, dataset, tmp_path):
    recipe = write_recipe(
        tmp_path / "r.toml", sd15, dataset, {"name": "csc", "conditions": ["canny"], "hint_kernel": 1},
        tmp_path / "out", train={"max_steps": 3}, checkpoint={"every": 1, "keep_last": 2},
        logging={"tensorboard": True, "loss_curve": True},
        validation={"every": 3, "num_images": 2, "steps": 2},
    )
    result = train(recipe)
    out = tmp_path / "out"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-00000002", "step-00000003"], "keep the last K, no temp folders left"
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    grid = out / "samples" / "step-00000003.png"
    from PIL import Image

    with Image.open(grid) as im:
        assert im.size == (2 * 32, 2 * 32)  # a row of conditions above a row of samples
    assert list(out.rglob("events.out.tfevents*")), "TensorBoard scalars through accelerate's tracker"
    assert result.samples == [str(grid)]


def test_gradient_accumulation_matches_one_big_batch(sd15, dataset, tmp_path):
    def run(tag, **train_cfg):
        # prepack off: oneDNN picks its weight layout per batch shape (4 vs 2 here), and the float-order
        # differences that follow are ones Adam's first steps can blow up to a whole lr for a near-zero
        # gradient; this test is about the accumulation, test_prepack.py about the convolutions.
        recipe = write_recipe(tmp_path / f"{tag}.toml", sd15, dataset, {"name": "sc"}, tmp_path / tag,
                              train={"max_steps": 2, "batch_size": 4, "prepack": False, **train_cfg})
        train(recipe)
        from safetensors.torch import load_file

        return load_file(tmp_path / tag / "tuner" / "tuner.safetensors")

    a = run("a")
    b = run("b", gradient_accumulation_steps=2)
    c = run("c", gradient_checkpointing=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=2e-5)  # Adam normalises tiny float-order differences
        torch.testing.assert_close(a[k], c[k], rtol=1e-3, atol=2e-5)  # Adam normalises tiny float-order differences


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(precision, sd15, dataset, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", sd15, dataset, {"name": "sc"}, tmp_path / "out",
                          train={"max_steps": 2, "mixed_precision": precision})
    result = train(recipe)
    assert result.final_loss == result.final_loss  # finite
    from safetensors.torch import load_file

    w = load_file(tmp_path / "out" / "tuner" / "tuner.safetensors")
    assert all(v.dtype == torch.float32 for v in w.values()), "trainable weights stay fp32"


def test_sc_base_inputs_carry_no_grad(sd15):
    """For sc/csc nothing upstream of the skips records activations: the U-Net input needs no grad."""
    from scedit_cli.methods import build_method
    from scedit_cli.models import load_base
    from tiny_models import unet_inputs

    base = load_base(str(sd15))
    m = build_method("sc", {})
    m.setup(base)
    assert not any(p.requires_grad for p in base.unet.parameters())
    assert all(p.requires_grad for p in m.trainable_parameters())
    inp = unet_inputs(base.unet)
    assert not inp["sample"].requires_grad
    pred = m.predict(inp["sample"], inp["timestep"], inp["encoder_hidden_states"])
    pred.mean().backward()
    assert all(p.grad is not None for p in m.trainable_parameters())


@pytest.mark.parametrize("name", ["sc", "lora", "controlnet", "controlnet-xs"])
def test_frozen_weights_half_trainable_fp32(name):
    """What the loop does on a GPU with fp16 AMP: frozen base weights in fp16, trainable ones fp32."""
    from scedit_cli.methods import build_method
    from scedit_cli.models import BaseModel
    from scedit_cli.recipes import load_recipe
    from scedit_cli.precision import cast_frozen, resolve_frozen_dtype, vae_dtype
    from tiny_models import make_tiny_unet

    cfg = {k: v for k, v in method_cfg(name).items() if k != "name"}
    m = build_method(name, cfg)
    base = BaseModel.from_unet(make_tiny_unet(), vae_scale_factor=2)
    m.setup(base)
    raw = {"model": {"source": "x/y"}, "data": {"source": "x/z"}, "method": {"name": "sc"},
           "train": {"output_dir": "o", "mixed_precision": "fp16"}}
    r = load_recipe(raw)
    assert resolve_frozen_dtype(r, torch.device("cuda")) == torch.float16
    assert resolve_frozen_dtype(r, torch.device("cpu")) == torch.float32
    cast_frozen([m.unet, *m.trainable_modules()], torch.float16)
    trainable = {id(p) for p in m.trainable_parameters()}
    assert trainable and all(p.dtype == torch.float32 for p in m.trainable_parameters())
    frozen = [p for p in m.unet.parameters() if id(p) not in trainable]
    assert frozen and all(p.dtype == torch.float16 for p in frozen)
    r_cpu = load_recipe({**raw, "model": {"source": "x/y", "frozen_dtype": "fp16"}})
    with pytest.raises(Exception, match="needs a GPU"):
        resolve_frozen_dtype(r_cpu, torch.device("cpu"))
    # SDXL's VAE overflows in fp16: it alone stays fp32 there
    assert vae_dtype(True, torch.float16) == torch.float32
    assert vae_dtype(False, torch.float16) == torch.float16 and vae_dtype(True, torch.bfloat16) == torch.bfloat16


def test_validation_grid_lays_rows_out_without_gaps(tmp_path):
    from PIL import Image

    from scedit_cli.training.logging import save_grid

    colours = [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (9, 9, 9)]]
    rows = [[Image.new("RGB", (8, 6), c) for c in row] for row in colours]
    with Image.open(save_grid(rows, tmp_path / "g.png")) as g:
        assert g.size == (16, 12)
        for i, row in enumerate(colours):
            for j, c in enumerate(row):
                assert g.getpixel((j * 8 + 4, i * 6 + 3)) == c
    with pytest.raises(ValueError, match="differ in length"):
        save_grid([rows[0], rows[1][:1]], tmp_path / "h.png")
