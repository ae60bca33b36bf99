"""Loss options (Min-SNR-gamma, noise offset, input perturbation), EMA, warm-up: off by default, each real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.errors import SceditError
from scedit_cli.models import BaseModel
from scedit_cli.recipes import load_recipe
from scedit_cli.training import StepBatch, compute_loss, make_noise_scheduler, train
from scedit_cli.training.loop import LossOptions, min_snr_weights



class _Echo:
    """A 'method' that predicts a fixed tensor, so the loss is a known function of the draws."""

    def __init__(self, pred):
        self.pred = pred

    def predict(self, noisy, t, ehs, added=None, conds=None):
        self.noisy, self.t = noisy, t
        return self.pred


def _sched():
    return make_noise_scheduler(BaseModel.from_unet(torch.nn.Module.__new__(torch.nn.Module), is_sdxl=False))


def test_min_snr_weights_match_the_formula_and_change_the_loss():
    sched = _sched()
    t = torch.tensor([1, 100, 500, 999])
    ac = sched.alphas_cumprod[t].double()
    snr = ac / (1 - ac)
    w = min_snr_weights(sched, t, 5.0, "epsilon")
    torch.testing.assert_close(w, (torch.clamp(snr, max=5.0) / snr).float())
    torch.testing.assert_close(min_snr_weights(sched, t, 5.0, "v_prediction"),
                               (torch.clamp(snr, max=5.0) / (snr + 1)).float())
    assert w[0] < 1e-2 and w[-1] == 1.0  # low-noise steps down-weighted, high-noise ones untouched

    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = StepBatch(latents, torch.zeros(4, 3, 8))
    pred = torch.zeros_like(latents)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    m = _Echo(pred)
    plain = compute_loss(m, sched, "epsilon", batch, gens())
    t_drawn = m.t
    weighted = compute_loss(m, sched, "epsilon", batch, gens(), LossOptions(snr_gamma=5.0))
    noise = torch.stack([torch.randn(4, 8, 8, generator=g) for g in gens()])
    per = noise.pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(weighted, (per * min_snr_weights(sched, t_drawn, 5.0, "epsilon")).mean())
    torch.testing.assert_close(plain, per.mean())


def test_noise_offset_and_input_perturbation_draw_after_the_default_draws():
    sched = _sched()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = StepBatch(latents, torch.zeros(2, 3, 8))
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(2)]  # noqa: E731
    m = _Echo(torch.zeros_like(latents))
    base_loss = compute_loss(m, sched, "epsilon", batch, gens())
    base_noisy, t = m.noisy.clone(), m.t
    off = compute_loss(m, sched, "epsilon", batch, gens(), LossOptions(noise_offset=0.1))
    assert m.t.equal(t) and not torch.equal(off, base_loss)
    # the offset is constant over each (sample, channel) plane
    diff = (m.noisy - base_noisy)
    assert torch.allclose(diff, diff[..., :1, :1].expand_as(diff), atol=1e-6) and diff.abs().max() > 0
    pert = compute_loss(m, sched, "epsilon", batch, gens(), LossOptions(input_perturbation=0.1))
    assert torch.equal(pert, base_loss)  # the target stays the unperturbed noise ...
    assert not torch.equal(m.noisy, base_noisy)  # ... while the input is perturbed
    assert LossOptions.from_train(load_recipe(_min_recipe()).train) is None  # all off by default


def _min_recipe():
    return {"model": {"source": "x"}, "data": {"source": "y"}, "method": {"name": "sc"},
            "train": {"output_dir": "o"}}


def test_recipe_checks_loss_option_values():
    bad = _min_recipe()
    bad["train"]["ema_decay"] = 1.0
    with pytest.raises(SceditError, match="train.ema_decay"):
        load_recipe(bad)
    bad = _min_recipe()
    bad["train"]["snr_gamma"] = -1.0
    with pytest.raises(SceditError, match="train.snr_gamma"):
        load_recipe(bad)


def test_ema_warmup_and_options_train_end_to_end_and_resume_exactly(tmp_path):
    sd15, data = tmp_path / "sd15", tmp_path / "data"
    make_tiny_pipeline(sd15, "sd15")
    make_dataset(data, n=4)
    opts = {"snr_gamma": 5.0, "noise_offset": 0.05, "input_perturbation": 0.1, "ema_decay": 0.5,
            "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 2, "max_steps": 4}

    def recipe(name, **extra):
        return write_recipe(tmp_path / f"{name}.toml", sd15, data, {"name": "sc"}, tmp_path / name,
                            train={**opts, **extra}, checkpoint={"every": 2, "keep_last": 3})

    full = train(recipe("full"))
    out = tmp_path / "full"
    main_w = load_file(str(out / "tuner" / "tuner.safetensors"))
    ema_w = load_file(str(out / "ema" / "tuner" / "tuner.safetensors"))
    assert main_w.keys() == ema_w.keys()
    assert any(not torch.equal(main_w[k], ema_w[k]) for k in main_w)
    # EMA = 0.5 * previous EMA + 0.5 * weights after each step: check the last update from checkpoint 2
    # is consistent (EMA lies between the start and the final weights for the zero-initialised up projection)
    up = [k for k in main_w if ".ln2." in k]  # the zero-initialised up projections
    assert up and all(ema_w[k].abs().sum() < main_w[k].abs().sum() for k in up)
    # warm-up: lr 0 at the first step would leave the weights unchanged; linear warm-up gives lr/2 at step 1
    import json

    state = json.loads((out / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert state["lr_scheduler"]["_last_lr"][0] == pytest.approx(1e-3)
    # resume from step 2 (EMA restored from ema.safetensors) gives the same losses and EMA
    part = recipe("part", max_steps=2)
    train(part)
    resumed = train(recipe("part"), resume="latest")
    np.testing.assert_array_equal([v for _, v in resumed.losses], [v for _, v in full.losses])
    ema_r = load_file(str(tmp_path / "part" / "ema" / "tuner" / "tuner.safetensors"))
    for k in ema_w:
        assert torch.equal(ema_w[k], ema_r[k])
