"""webdataset tar shards as training data: the ways to name them, captions, condition members, bad members,
the index cache, shard-local order, every sample once per epoch across processes x workers."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import pytest
import torch

from train_helpers import make_shards
from scedit_cli.data import load_training_data
from scedit_cli.errors import SceditError
from scedit_cli.loader import training_loader
from scedit_cli.recipes import DataSection, TrainSection
from scedit_cli.samplers import ShardStreamSampler


def cfg(source, tmp_path, **kw) -> DataSection:
    return DataSection(source=str(source), resolution=32, cache_dir=str(tmp_path / "cache"), **kw)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("wds") / "shards", n=5, per_shard=2)


def _captions(data) -> list[str]:
    return sorted(data.row(i)["text"] for i in range(len(data)))


def test_shards_by_folder_glob_list_range_and_file_url(shards, tmp_path):
    folder = shards[0].parent
    sources = [folder, f"{folder}/shard-*.tar", ",".join(str(s) for s in shards),
               f"{folder}/shard-{{000..002}}.tar", f"file://{folder}/shard-*.tar", shards[0].as_uri()]
    ref = load_training_data(cfg(folder, tmp_path), ["canny"])
    assert len(ref) == 5 and _captions(ref) == [f"red circle {i}" for i in range(5)]
    item = ref[(0, 0)]
    assert item["pixel_values"].shape == (3, 32, 32) and item["conditions"][0].shape == (3, 32, 32)
    assert item["conditions"][0].max() > 0.9 and item["conditions"][0].min() < 0.1  # the circle map, read by offset
    for src in sources[1:5]:
        data = load_training_data(cfg(src, tmp_path), ["canny"])
        assert _captions(data) == _captions(ref), src
        assert torch.equal(data[(0, 0)]["pixel_values"], item["pixel_values"]), src
    one = load_training_data(cfg(sources[5], tmp_path), ["canny"])
    assert _captions(one) == ["red circle 0", "red circle 1"]
    assert torch.equal(one[(0, 0)]["pixel_values"], item["pixel_values"])
    # the index lives in the cache, never beside the shards
    assert sorted(p.name for p in folder.iterdir()) == [s.name for s in shards]
    assert len(list((tmp_path / "cache" / "shard-index").glob("*.json"))) == 3


def test_caption_from_json_member(tmp_path):
    shards = make_shards(tmp_path / "s", n=3, per_shard=3, conditions=(), caption_in="json")
    data = load_training_data(cfg(shards[0], tmp_path), [])
    assert _captions(data) == ["red circle 0", "red circle 1", "red circle 2"]
    assert data[(4, 1)]["caption"] == "red circle 1"


def test_missing_condition_member_names_the_column(shards, tmp_path):
    with pytest.raises(SceditError, match="no column 'depth'"):
        load_training_data(cfg(shards[0].parent, tmp_path), ["depth"])


def test_bad_members_are_skipped_and_counted(tmp_path):
    shards = make_shards(tmp_path / "s", n=3, per_shard=3, conditions=())
    with tarfile.open(shards[0], "a") as tar:  # a corrupt image and a caption without an image
        for name, payload in (("bad.png", b"not a png"), ("bad.txt", b"x"), ("lonely.txt", b"y")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = load_training_data(cfg(shards[0], tmp_path), [])
    keys = data.ds["__key__"]
    bad, lonely = keys.index("bad"), keys.index("lonely")
    assert "unreadable image" in data[(0, bad)]["skipped"] and "shard-000.tar:bad.png" in data[(0, bad)]["skipped"]
    assert "no image" in data[(0, lonely)]["skipped"]
    loader, _ = training_loader(data, TrainSection(seed=0, batch_size=5, max_steps=1), 0, 0, 1, 0)
    batch = next(iter(loader))
    assert batch["size"] == 3 and len(batch["skipped"]) == 2


def test_not_a_tar_is_one_line_error(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"garbage" * 10)
    with pytest.raises(SceditError, match="x.tar: not a readable tar shard"):
        load_training_data(cfg(tmp_path / "x.tar", tmp_path), [])
    with pytest.raises(SceditError, match="missing-.*tar: shard not found"):
        load_training_data(cfg(f"{tmp_path}/x.tar,{tmp_path}/missing-1.tar", tmp_path), [])
    with pytest.raises(SceditError, match="no file matches this pattern"):
        load_training_data(cfg(f"{tmp_path}/none-*.tar", tmp_path), [])


def test_shard_order_is_local_and_a_permutation_per_epoch():
    shard_of = [k for k in range(6) for _ in range(4)]
    s = ShardStreamSampler(shard_of, 4, 7, 4, 1, 0, 1, 0, 6)
    for epoch in range(2):
        perm = s.permutation(epoch)
        assert sorted(perm.tolist()) == list(range(24))
        windows = [{shard_of[i] for i in perm[w: w + 4]} for w in range(0, 24, 4)]
        assert all(len(w) == 1 for w in windows)  # one shard per window of its size
    assert s.permutation(0).tolist() != s.permutation(1).tolist()
    assert s.permutation(1).tolist() == ShardStreamSampler(shard_of, 4, 7, 4, 1, 0, 1, 0, 6).permutation(1).tolist()


def test_two_processes_two_workers_see_every_sample_once_per_epoch(tmp_path):
    shards = make_shards(tmp_path / "s", n=12, per_shard=3, conditions=())
    data = load_training_data(cfg(shards[0].parent, tmp_path, shuffle_window=4), [])
    train = TrainSection(seed=3, batch_size=4, gradient_accumulation_steps=1, max_steps=6)  # 2 epochs of 12
    seen = Counter()
    for rank in range(2):
        loader, sampler = training_loader(data, train, 2, rank, 2, 0)
        for batch in loader:
            assert batch["size"] == 2 and not batch["skipped"]
            for pos, caption in zip(batch["positions"], batch["captions"]):
                seen[(pos // 12, caption)] += 1
                assert data.row(sampler._index(pos))["text"] == caption
    assert seen == Counter({(e, f"red circle {i}"): 1 for e in range(2) for i in range(12)})


def test_shards_at_an_fsspec_url_are_read_by_offset(shards, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    for s in shards:
        fs.pipe(f"/wds-test/{s.name}", s.read_bytes())
    try:
        data = load_training_data(cfg("memory://wds-test/shard-{000..002}.tar", tmp_path), ["canny"])
        ref = load_training_data(cfg(shards[0].parent, tmp_path), ["canny"])
        assert data.loaded.reader.urls[0].startswith("memory://")
        assert _captions(data) == _captions(ref)
        assert torch.equal(data[(2, 3)]["conditions"][0], ref[(2, 3)]["conditions"][0])
    finally:
        fs.rm("/wds-test", recursive=True)


def test_kill_9_and_resume_latest_on_shards_is_exact(tmp_path):
    from safetensors.torch import load_file
    from train_helpers import make_tiny_pipeline, write_recipe
    from test_train_resume import N, _resume_and_compare, kill_9_after_checkpoint
    from scedit_cli.training import train

    make_tiny_pipeline(tmp_path / "sd15", "sd15")
    shards = make_shards(tmp_path / "shards", n=5, per_shard=2)
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "sd15", f"{shards[0].parent}/shard-*.tar",
                          {"name": "csc", "conditions": ["canny"], "hint_kernel": 1}, tmp_path / "unused",
                          train={"max_steps": 2 * N, "batch_size": 4}, checkpoint={"every": N, "keep_last": 2},
                          data={"random_flip": True, "caption_dropout": 0.3, "shuffle_window": 2,
                                "cache_dir": str(tmp_path / "cache")})
    train(recipe, overrides=[f'train.output_dir="{tmp_path / "reference"}"'])
    reference = load_file(tmp_path / "reference" / "tuner" / "tuner.safetensors")
    out = tmp_path / "killed"
    kill_9_after_checkpoint(recipe, out)
    assert _resume_and_compare(recipe, out, reference).resumed_from.endswith(f"step-{N:08d}")


def test_recipe_shard_names_are_relative_to_the_recipe(tmp_path):
    from scedit_cli.recipes import load_recipe

    (tmp_path / "r.toml").write_text('[model]\nsource = "some/model"\n[method]\nname = "sc"\n[train]\noutput_dir = "out"\n[data]\n'
                                     'source = "shards/a-{000..001}.tar, /abs/b.tar, s3://bkt/c.tar"\n')
    got = load_recipe(tmp_path / "r.toml").data.source
    assert got == f"{tmp_path}/shards/a-{{000..001}}.tar,/abs/b.tar,s3://bkt/c.tar"
