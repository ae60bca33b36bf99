"""Base-model loading for training: folders, hub ids (offline), single files; facts read from the components."""

from __future__ import annotations

import pytest
from safetensors.torch import save_file
import torch

from train_helpers import make_tiny_pipeline
from scedit_cli.errors import SceditError
from scedit_cli.models import load_base


@pytest.mark.parametrize("kind, prediction", [("sd15", "epsilon"), ("sd21", "v_prediction"), ("sdxl", "epsilon")])
def test_folder_facts_come_from_the_components(tmp_path, kind, prediction, caplog):
    make_tiny_pipeline(tmp_path / kind, kind, prediction_type=prediction)
    base = load_base(str(tmp_path / kind))
    assert base.is_sdxl == (kind == "sdxl")
    assert base.prediction_type == prediction
    assert base.vae_scale_factor == 2
    assert len(base.text_encoders) == (2 if kind == "sdxl" else 1)
    assert "not expected" not in caplog.text, "SDXL pipelines get no safety_checker argument"


def test_missing_hub_model_offline_is_one_clear_line():
    with pytest.raises(SceditError) as e:
        load_base("nobody/no-such-model")
    msg = str(e.value)
    assert "hf download nobody/no-such-model" in msg and "\n" not in msg


def test_bad_single_files(tmp_path):
    with pytest.raises(SceditError, match="not found"):
        load_base(str(tmp_path / "missing.safetensors"))
    (tmp_path / "m.ckpt").write_bytes(b"x")
    with pytest.raises(SceditError, match="convert it to .safetensors"):
        load_base(str(tmp_path / "m.ckpt"))
    save_file({"foo": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SceditError, match="cannot load base model"):
        load_base(str(tmp_path / "bad.safetensors"))


def test_folder_without_model_index(tmp_path):
    with pytest.raises(SceditError, match="model_index.json"):
        load_base(str(tmp_path))


def test_single_file_checkpoint_loads_and_trains(tmp_path):
    """An original-format .safetensors of the tiny model: same weights through from_single_file, and it trains."""
    from single_file import to_single_file
    from train_helpers import make_dataset, write_recipe
    from scedit_cli.training import train

    make_tiny_pipeline(tmp_path / "folder", "sd15")
    pipe = to_single_file(tmp_path / "folder", tmp_path / "tiny.safetensors")
    base = load_base(str(tmp_path / "tiny.safetensors"), config=str(tmp_path / "folder"))
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(base.pipeline, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    data = make_dataset(tmp_path / "d", n=2)
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "tiny.safetensors", data, {"name": "sc"}, tmp_path / "out",
                          train={"max_steps": 1}, model={"single_file_config": str(tmp_path / "folder")})
    assert train(recipe).steps == 1
