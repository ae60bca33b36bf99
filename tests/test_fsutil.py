"""Atomic writes: outputs get the user's umask like any other file, and a failed write leaves nothing."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from scedit_cli.fsutil import atomic_dir, atomic_path, remove_paths, write_json_atomic
from scedit_cli.sampling.manifest import save_png, write_manifest
from scedit_cli.tuners import SCTunerConfig, SkipLayout, build_tuner, save_tuner


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_files_and_folders_follow_the_umask(tmp_path, umask):
    with atomic_path(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"x")
    write_json_atomic(tmp_path / "b.json", {"a": 1})
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("y")
        (tmp / "sub").mkdir(mode=0o700)
        save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "w.safetensors"))  # safetensors writes 0600 itself
    assert _mode(tmp_path / "a.bin") == 0o666 & ~umask
    assert _mode(tmp_path / "b.json") == 0o666 & ~umask
    assert _mode(tmp_path / "folder") == 0o777 & ~umask
    assert _mode(tmp_path / "folder" / "inside.txt") == 0o666 & ~umask
    assert _mode(tmp_path / "folder" / "sub") == 0o777 & ~umask
    assert _mode(tmp_path / "folder" / "sub" / "w.safetensors") == 0o666 & ~umask


def test_tuner_png_and_manifest_follow_the_umask(tmp_path, umask, tiny_unet):
    layout = SkipLayout.from_unet(tiny_unet)
    folder = save_tuner(build_tuner("sc", SCTunerConfig().to_dict(), layout), tmp_path / "tuner")
    save_png(Image.new("RGB", (8, 8)), tmp_path / "img.png", {"seed": 0})
    manifest = write_manifest(tmp_path, [{"seed": 0}])
    for p in [*folder.iterdir(), tmp_path / "img.png", manifest]:
        assert _mode(p) == 0o666 & ~umask, p


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_remove_paths_removes_only_the_names_given(tmp_path):
    (tmp_path / "ckpt" / "step-1").mkdir(parents=True)
    (tmp_path / "loss.png").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f").write_text("y")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    remove_paths(tmp_path, ["ckpt", "loss.png", "link", "absent"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "keep.txt"]
    assert (tmp_path / "elsewhere" / "f").read_text() == "y", "a link is removed, not what it points to"
