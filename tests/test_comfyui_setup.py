"""ComfyUI nodes: their contracts, listing tuners through folder_paths, one-line errors, official
checkpoints converted on load, hint images, `scedit comfyui install`, the example workflows and Hub ids."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from comfy_double import apply_model, comfy_model
from comfy_toy import Control, Tuner, load_image, toy, toy_inputs, toy_model  # noqa: F401  (toy: a fixture)
from hub_helpers import add_to_cache, hf_cache  # noqa: F401  (hf_cache: a fixture)
from tiny_models import randomize_
from scedit_cli.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from scedit_cli.comfyui import model as comfy_info
from scedit_cli.comfyui.hints import fit_hint
from scedit_cli.comfyui.install import install
from scedit_cli.comfyui.loader import FOLDER
from scedit_cli.comfyui.patch import STATE_KEY, entries_of, output_block_patch
from scedit_cli.errors import SceditError
from scedit_cli.tuners import SCTuner, SCTunerConfig, load_tuner, save_tuner


def test_node_contracts():
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS) == {"SCEditTuner", "SCEditControl"}
    expected = {"SCEditTuner": {"model": "MODEL", "tuner": "STRING", "strength": "FLOAT"},
                "SCEditControl": {"model": "MODEL", "tuner": "STRING", "image": "IMAGE", "strength": "FLOAT",
                                  "start_percent": "FLOAT", "end_percent": "FLOAT"}}
    for key, cls in NODE_CLASS_MAPPINGS.items():
        required = cls.INPUT_TYPES()["required"]
        assert {k: v[0] for k, v in required.items()} == expected[key]
        assert cls.RETURN_TYPES == ("MODEL",) and cls.CATEGORY == "scedit"
        optional = cls.INPUT_TYPES()["optional"]
        assert {k: v[0] for k, v in optional.items()} == {"hub_id": "STRING"}
        params = __import__("inspect").signature(getattr(cls, cls.FUNCTION)).parameters
        assert list(params) == ["self", *required, *optional]  # ComfyUI calls FUNCTION with the inputs as keywords
        assert params["hub_id"].default == ""  # an optional input ComfyUI may leave out
        for name, (kind, *opts) in required.items():
            if kind == "FLOAT":
                o = opts[0]
                assert o["min"] <= o["default"] <= o["max"]
    control = NODE_CLASS_MAPPINGS["SCEditControl"].INPUT_TYPES()["required"]
    assert (control["start_percent"][1]["min"], control["end_percent"][1]["max"]) == (0.0, 1.0)


def _fake_folder_paths(models_dir):
    """ComfyUI's folder_paths, reduced to what the nodes call (written from its source)."""
    import os
    import types

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.folder_names_and_paths = {}

    def get_filename_list(name):
        folders, exts = fp.folder_names_and_paths[name]
        out = set()
        for folder in folders:
            for root, _, names in os.walk(folder):
                for n in names:
                    rel = os.path.relpath(os.path.join(root, n), folder)
                    if os.path.splitext(n)[1].lower() in exts:
                        out.add(rel)
        return sorted(out)

    def get_full_path(name, filename):
        for folder in fp.folder_names_and_paths[name][0]:
            full = os.path.join(folder, filename)
            if os.path.isfile(full):
                return full
        return None

    fp.get_filename_list, fp.get_full_path = get_filename_list, get_full_path
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])
    return fp


def test_tuners_are_listed_and_found_through_folder_paths(toy, tmp_path, monkeypatch):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(toy.paths["sc"], models / FOLDER / "my-style")
    (models / FOLDER / "notes.txt").write_text("not a tuner")
    monkeypatch.setitem(sys.modules, "folder_paths", _fake_folder_paths(models))
    choices = NODE_CLASS_MAPPINGS["SCEditTuner"].INPUT_TYPES()["required"]["tuner"][0]
    assert choices == ["my-style/tuner.safetensors"]
    m = Tuner.apply(toy_model(toy), "my-style/tuner.safetensors", 1.0)[0]
    assert entries_of(m)[0].name == "my-style/tuner.safetensors"
    with pytest.raises(SceditError, match="'gone.safetensors' not found in .*models/scedit"):
        Tuner.apply(toy_model(toy), "gone.safetensors", 1.0)


# --- errors -----------------------------------------------------------------------------------------------


def test_errors_are_one_line_and_name_what_to_fix(toy, tmp_path, caplog):
    sd15_unet = SimpleNamespace(model_channels=8, channel_mult=(1, 2, 4, 4), num_res_blocks=2, output_blocks=[0] * 12)
    sd15_layout = comfy_info.skip_layout(SimpleNamespace(model=SimpleNamespace(diffusion_model=sd15_unet)))
    sd15 = save_tuner(SCTuner(SCTunerConfig(), sd15_layout), tmp_path / "sd15")
    img = load_image(toy.maps["canny"])
    cases = [
        (lambda: Tuner.apply(toy_model(toy), str(sd15), 1.0), r"12 skips, channels \[8, 8.*this U-Net has 6 skips, "
                                                            r"channels \[64, 64, 64, 128, 128, 128\]"),
        (lambda: Tuner.apply(toy_model(toy), toy.paths["canny"], 1.0), "CSC-Tuner for 'canny'.*SCEdit Control node"),
        (lambda: Control.apply(toy_model(toy), toy.paths["sc"], img, 1.0, 0.0, 1.0), "SC-Tuner.*SCEdit Tuner node"),
        (lambda: Control.apply(toy_model(toy), toy.paths["canny"], None, 1.0, 0.0, 1.0), "needs a condition image"),
        (lambda: Control.apply(toy_model(toy), toy.paths["canny"], img[..., :2], 1.0, 0.0, 1.0), "3-channel conditions"),
        (lambda: Tuner.apply(toy_model(toy), str(tmp_path / "missing"), 1.0), "missing: tuner file not found; pass a tuner folder"),
        (lambda: Tuner.apply(toy_model(toy), "", 1.0), "no tuner chosen"),
    ]
    latent8 = comfy_model(toy.base.unet, toy.base.pipeline.scheduler.config, 64, 8)
    cases.append((lambda: Control.apply(latent8, toy.paths["canny"], img, 1.0, 0.0, 1.0), "downsamples 4x.*1/8"))
    for call, message in cases:
        with pytest.raises(SceditError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
    # at run time: a skip whose channels do not fit the tuner
    entries = entries_of(Tuner.apply(toy_model(toy), toy.paths["sc"], 1.0)[0])
    with pytest.raises(SceditError, match="output block 0 .* 32-channel skip but tuner .* expects 128"):
        output_block_patch(torch.zeros(1, 128, 2, 2), torch.zeros(1, 32, 2, 2), {STATE_KEY: entries,
                                                                                 "block": ("output", 0)})
    with pytest.raises(SceditError, match="output block 6 .* expects no skip"):
        output_block_patch(torch.zeros(1, 64, 8, 8), torch.zeros(1, 64, 8, 8), {STATE_KEY: entries,
                                                                                "block": ("output", 6)})
    # a tuner recorded for another family than the model: a warning, not an error
    sd21 = save_tuner(randomize_(SCTuner(SCTunerConfig(), toy.layout), 0), tmp_path / "sd21",
                      base="stabilityai/stable-diffusion-2-1")
    with caplog.at_level(logging.WARNING, logger="scedit"):
        Tuner.apply(comfy_model(toy.base.unet, toy.base.pipeline.scheduler.config, 1024, 4), str(sd21), 1.0)
        assert not caplog.records
        Tuner.apply(comfy_model(toy.base.unet, toy.base.pipeline.scheduler.config, 768, 4), str(sd21), 1.0)
    assert "trained on stabilityai/stable-diffusion-2-1 (SD 2.x) but this model is SD 1.x" in caplog.text


@pytest.mark.parametrize("name, family", [
    ("runwayml/stable-diffusion-v1-5", "SD 1.x"), ("v1-5-pruned-emaonly.safetensors", "SD 1.x"), ("sd15", "SD 1.x"),
    ("stabilityai/stable-diffusion-2-1-base", "SD 2.x"), ("v2-1_768-ema-pruned.safetensors", "SD 2.x"),
    ("sd21", "SD 2.x"), ("stabilityai/stable-diffusion-xl-base-1.0", "SDXL"), ("sdxl", "SDXL"),
    ("/models/toy-base", None), (None, None)])
def test_base_family_from_recorded_names(name, family):
    assert comfy_info.base_family(name) == family


# --- official checkpoints, hint images -----------------------------------------------------------------------


def test_official_checkpoints_convert_on_load(toy, tmp_path):
    """scepter SC and CSC checkpoints (keys as `scedit convert` reads them) act as the scedit tuners they hold."""
    from scedit_cli.tuners import load_tuner

    sc, csc = load_tuner(toy.paths["sc"]), load_tuner(toy.paths["canny"])
    sc_state = {f"model.lsc_identity.{k.split('.')[1]}.tuner_op.{'.'.join(k.split('.')[2:])}": v
                for k, v in sc.state_dict().items()}
    csc_state = {}
    for k, v in csc.state_dict().items():
        if k.startswith("hint.pre_hint_blocks."):
            csc_state[k.removeprefix("hint.")] = v
        elif k.startswith("hint.dense_hint_blocks."):
            _, _, pos, rest = k.split(".", 3)
            csc_state[f"dense_hint_blocks.{csc.tuned_encoder_skips()[int(pos)]}.{rest}"] = v
        else:
            _, j, rest = k.split(".", 2)
            csc_state[f"lsc_tuner_blocks.{j}.tuner_op.{rest}"] = v
    (tmp_path / "canny").mkdir()
    torch.save(sc_state, tmp_path / "sc.bin")
    torch.save(csc_state, tmp_path / "canny" / "pytorch_model.bin")
    img = load_image(toy.maps["canny"])
    x, ctx = toy_inputs(toy)
    with torch.no_grad():
        for ours, official, node in ((toy.paths["sc"], tmp_path / "sc.bin", "sc"),
                                     (toy.paths["canny"], tmp_path / "canny" / "pytorch_model.bin", "csc")):
            apply = (lambda m, p: Tuner.apply(m, str(p), 1.0)) if node == "sc" else \
                (lambda m, p: Control.apply(m, str(p), img, 1.0, 0.0, 1.0))
            converted = apply(toy_model(toy), official)[0]
            torch.testing.assert_close(apply_model(converted, x, 300, ctx, [0, 1]),
                                       apply_model(apply(toy_model(toy), ours)[0], x, 300, ctx, [0, 1]))
    assert entries_of(converted)[0].tuner.config.condition == "canny"
    assert entries_of(converted)[0].tuner.file_meta["source_format"] == "scepter-control"


def test_hint_images_are_fitted_and_paired_as_comfyui_controlnet_does():
    from scedit_cli.comfyui.hints import batch_hint, image_to_condition

    wide = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 1, 4, 6)
    # common_upscale(..., "center"): a 6x4 image fitted to 4x4 loses one column each side
    assert torch.equal(fit_hint(wide, 4, 4), wide[:, :, :, 1:5])
    assert torch.equal(fit_hint(wide, 12, 8), wide.repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert fit_hint(wide, 6, 4) is wide
    c = torch.arange(2.0).view(2, 1, 1, 1)
    assert batch_hint(c, 6, 2).flatten().tolist() == [0, 1, 0, 0, 1, 0]  # 3 latents a chunk, 2 images
    assert batch_hint(c[:1], 6, 2) is not None and batch_hint(c[:1], 6, 2).shape[0] == 1  # tiled by the tuner
    rgba = torch.rand(1, 5, 5, 4)
    assert torch.equal(image_to_condition(rgba, 3, "t"), rgba[..., :3].movedim(-1, 1))
    grey = image_to_condition(torch.ones(1, 5, 5, 3) * torch.tensor([1.0, 0.0, 0.0]), 1, "t")
    assert grey.shape == (1, 1, 5, 5) and torch.allclose(grey, torch.full_like(grey, 0.299))


# --- install and workflows ---------------------------------------------------------------------------------


def _fake_comfyui(root):
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("# ComfyUI\n")
    return root


def test_install_writes_a_loader_that_exposes_the_nodes(tmp_path, capsys, monkeypatch):
    from scedit_cli.cli import main
    from scedit_cli.comfyui import install as install_module

    comfy = _fake_comfyui(tmp_path / "ComfyUI")
    main(["comfyui", "install", str(comfy), "--json"])
    result = json.loads(capsys.readouterr().out)
    loader = comfy / "custom_nodes" / "scedit" / "__init__.py"
    assert result["status"] == "written" and result["loader"] == str(loader.resolve())
    assert (comfy / "models" / "scedit").is_dir() and "-m pip install" in result["pip_command"]
    spec = importlib.util.spec_from_file_location("scedit_custom_nodes", loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert module.NODE_DISPLAY_NAME_MAPPINGS is NODE_DISPLAY_NAME_MAPPINGS
    assert install(comfy).status == "unchanged"
    loader.write_text("# edited\n")
    with pytest.raises(SceditError, match="pass --force"):
        install(comfy)
    assert install(comfy, force=True).status == "replaced"
    with pytest.raises(SystemExit) as e:
        main(["comfyui", "install", str(tmp_path)])
    assert e.value.code == 2 and "not a ComfyUI checkout" in capsys.readouterr().err
    # ComfyUI's Python without scedit: the loader says how to install it (-I -S: no site-packages, no PYTHONPATH)
    monkeypatch.setattr(install_module, "pip_source", lambda: r"C:\Users\me\scedit")  # a Windows checkout
    assert install(comfy, force=True).status == "replaced"
    run = subprocess.run([sys.executable, "-I", "-S", str(loader)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "scedit is not installed in the Python that runs ComfyUI" in run.stderr
    assert r"-m pip install C:\Users\me\scedit` and restart ComfyUI" in run.stderr


CORE_NODES = {  # ComfyUI's nodes.py / comfy_extras: input names (linked inputs with their type) and outputs
    "CheckpointLoaderSimple": ({"ckpt_name": None}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ({"text": None, "clip": "CLIP"}, ("CONDITIONING",)),
    "EmptyLatentImage": ({"width": None, "height": None, "batch_size": None}, ("LATENT",)),
    "KSampler": ({"model": "MODEL", "seed": None, "steps": None, "cfg": None, "sampler_name": None, "scheduler": None,
                  "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT", "denoise": None},
                 ("LATENT",)),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": None}, ()),
    "LoadImage": ({"image": None}, ("IMAGE", "MASK")),
    "Canny": ({"image": "IMAGE", "low_threshold": None, "high_threshold": None}, ("IMAGE",)),
}


@pytest.mark.parametrize("name, node", [("sc_style.json", "SCEditTuner"), ("canny_control.json", "SCEditControl")])
def test_example_workflows_are_valid_api_json(name, node):
    graph = json.loads((files("scedit_cli") / "comfyui" / "workflows" / name).read_text())
    signatures = dict(CORE_NODES)
    for key, cls in NODE_CLASS_MAPPINGS.items():
        required = cls.INPUT_TYPES()["required"]
        links = {k: v[0] if v[0] in ("MODEL", "IMAGE") else None for k, v in required.items()}
        signatures[key] = (links, cls.RETURN_TYPES)
    assert node in {n["class_type"] for n in graph.values()}
    for nid, n in graph.items():
        inputs, _ = signatures[n["class_type"]]
        assert set(n["inputs"]) == set(inputs), (nid, n["class_type"])
        for k, v in n["inputs"].items():
            if inputs[k] is None:
                assert not isinstance(v, list), (nid, k)
                continue
            src, out = v
            assert signatures[graph[src]["class_type"]][1][out] == inputs[k], (nid, k)
        if n["class_type"] in NODE_CLASS_MAPPINGS:
            for k, (kind, *opts) in NODE_CLASS_MAPPINGS[n["class_type"]].INPUT_TYPES()["required"].items():
                if kind == "FLOAT":
                    assert opts[0]["min"] <= n["inputs"][k] <= opts[0]["max"]
                elif kind == "STRING":
                    assert isinstance(n["inputs"][k], str) and n["inputs"][k]


def test_hub_id_input_loads_a_tuner_from_the_hf_cache(toy, hf_cache, tmp_path, monkeypatch):
    files = {n: Path(toy.paths["sc"]) / n for n in ("tuner.safetensors", "tuner_config.json")}
    snap = add_to_cache(hf_cache, "someone/style", files)
    monkeypatch.setitem(sys.modules, "folder_paths", _fake_folder_paths(tmp_path / "models"))
    m = Tuner.apply(toy_model(toy), "", 1.0, hub_id=" someone/style ")[0]
    entry = entries_of(m)[0]
    assert entry.name == "someone/style"
    ref = load_tuner(snap)
    assert all(torch.equal(a, b) for a, b in zip(entry.tuner.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(SceditError, match="cannot load tuner 'nobody/missing'"):
        Tuner.apply(toy_model(toy), "", 1.0, hub_id="nobody/missing")
