"""Hub ids as tuner sources: `user/repo[/sub/folder][@revision]`, read from a real HF cache layout offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scedit_cli.cli import main
from scedit_cli.errors import SceditError
from scedit_cli.tuners import SCTuner, SCTunerConfig, SkipLayout, save_tuner
from scedit_cli.tuners.hub import HubTunerSource, parse_hub_source, resolve_tuner_source
from hub_helpers import COMMIT_V1, add_to_cache, hf_cache  # noqa: F401  (hf_cache: a fixture)
from tiny_models import make_tiny_pipeline, randomize_


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    pipe = make_tiny_pipeline(root / "sd15")
    layout = SkipLayout.from_unet(pipe.unet)
    sc = randomize_(SCTuner(SCTunerConfig(ratio=2), layout), 3)
    save_tuner(sc, root / "sc", base=str(root / "sd15"))
    save_tuner(sc, root / "sc_other", base="someone/another-base")
    return root


def _tuner_files(folder, prefix=""):
    return {prefix + n: folder / n for n in ("tuner.safetensors", "tuner_config.json")}


def test_source_syntax():
    assert parse_hub_source("user/repo") == HubTunerSource("user/repo")
    assert parse_hub_source("user/repo@v1.0") == HubTunerSource("user/repo", "", "v1.0")
    assert parse_hub_source("user/repo/canny/tuner") == HubTunerSource("user/repo", "canny/tuner")
    assert parse_hub_source("user/repo/canny@refs/pr/3") == HubTunerSource("user/repo", "canny", "refs/pr/3")
    for path_like in ("./out/tuner", "/abs/tuner", "~/tuner", "tuner.safetensors", "user/repo/t.safetensors",
                      "a--b/repo", "user/re..po", "justaname", "user/repo/../x", "C:/x/y"):
        assert parse_hub_source(path_like) is None, path_like


def test_hub_ids_resolve_from_the_cache_offline(world, hf_cache, monkeypatch):
    snap = add_to_cache(hf_cache, "someone/style", _tuner_files(world / "sc"))
    assert resolve_tuner_source("someone/style") == snap
    # a subfolder, and a revision that is a tag pointing at another commit
    sub = add_to_cache(hf_cache, "someone/many", _tuner_files(world / "sc", "sc/tuner/"))
    assert resolve_tuner_source("someone/many/sc/tuner") == sub / "sc" / "tuner"
    v1 = add_to_cache(hf_cache, "someone/style", _tuner_files(world / "sc"), commit=COMMIT_V1, ref="v1")
    assert resolve_tuner_source("someone/style@v1") == v1
    assert resolve_tuner_source(f"someone/style@{COMMIT_V1}") == v1
    # A local folder of that name wins.
    (hf_cache.parent / "someone" / "style").mkdir(parents=True)
    monkeypatch.chdir(hf_cache.parent)
    assert str(resolve_tuner_source("someone/style")) == "someone/style"


@pytest.mark.parametrize("source, message", [
    ("nobody/no-such-tuner", "cannot load tuner 'nobody/no-such-tuner' ("),
    ("someone/style@v9", "hf download someone/style --revision v9"),
    ("someone/style/canny", "no tuner.safetensors in someone/style folder 'canny'"),
    ("./missing/tuner", "./missing/tuner: tuner file not found"),
])
def test_missing_hub_tuners_are_one_line_errors(world, hf_cache, source, message):
    add_to_cache(hf_cache, "someone/style", _tuner_files(world / "sc"))
    with pytest.raises(SceditError) as e:
        resolve_tuner_source(source)
    msg = str(e.value)
    assert message in msg and "\n" not in msg
    if source.startswith("nobody"):  # the same wording as a base model that is not in the cache
        assert "not in the local HF cache and the hub is offline: run `hf download nobody/no-such-tuner`" in msg


def test_sample_cli_takes_hub_ids_and_warns_about_another_base(world, hf_cache, tmp_path, capsys):
    add_to_cache(hf_cache, "someone/style", _tuner_files(world / "sc"))
    add_to_cache(hf_cache, "someone/other", _tuner_files(world / "sc_other"))
    base = ["sample", "-m", str(world / "sd15"), "-p", "a red circle", "--steps", "2", "--seed", "1", "--json"]
    main(base + ["-t", "someone/style", "-o", str(tmp_path / "hub")])
    cap = capsys.readouterr()
    assert json.loads(cap.out)["generated"] == 1 and "warning" not in cap.err
    main(base + ["-t", str(world / "sc"), "-o", str(tmp_path / "local")])
    capsys.readouterr()
    a, b = (np.asarray(Image.open(tmp_path / d / "00000_s1.png")) for d in ("hub", "local"))
    assert np.array_equal(a, b), "the Hub tuner is the same tuner as the local folder"
    rec = json.loads((tmp_path / "hub" / "manifest.jsonl").read_text().splitlines()[0])
    assert "models--someone--style" in rec["settings"]["tuners"][0]["path"]

    main(base + ["-t", "someone/other", "-o", str(tmp_path / "other")])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "trained on base model 'someone/another-base'" in warnings[0]
    assert (tmp_path / "other" / "00000_s1.png").is_file(), "a warning, not a refusal"


def test_missing_hub_tuner_fails_before_the_base_loads(world, hf_cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        # an uncached hub id as the base: loading it first would fail with its own error
        main(["sample", "-m", "nobody/no-model", "-p", "x", "-t", "nobody/nothing", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot load tuner 'nobody/nothing'" in err, "the tuner is checked before the (missing) model"
