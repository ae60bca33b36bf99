"""Training data: sources (folder, parquet with image bytes, jsonl), transforms, caption dropout,
on-the-fly condition maps, and the deterministic data stream."""

from __future__ import annotations

import json

import pytest
import torch

from train_helpers import make_dataset
from scedit_cli.data import collate, load_training_data
from scedit_cli.samplers import StreamSampler
from scedit_cli.errors import SceditError
from scedit_cli.recipes import DataSection


def cfg(source, **kw) -> DataSection:
    return DataSection(source=str(source), resolution=32, **kw)


def test_folder_source_resizes_and_center_crops(tmp_path):
    data = make_dataset(tmp_path / "d", n=2, size=(40, 64))
    ds = load_training_data(cfg(data), ["canny"])
    item = ds[(0, 0)]
    assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].min() >= -1
    assert item["conditions"][0].shape == (3, 32, 32) and 0 <= item["conditions"][0].min()
    assert item["original_size"] == (40, 64) and item["crop_top_left"] == (0, (51 - 32) // 2)


def test_parquet_with_image_bytes_and_jsonl_file(tmp_path):
    import datasets

    data = make_dataset(tmp_path / "d", n=3)
    rows = [json.loads(l) for l in (data / "metadata.jsonl").read_text().splitlines()]
    table = {"image": [{"bytes": (data / r["image"]).read_bytes(), "path": None} for r in rows],
             "caption": [r["text"] for r in rows]}
    ds = datasets.Dataset.from_dict(table, features=datasets.Features(
        {"image": datasets.Image(), "caption": datasets.Value("string")}))
    ds.to_parquet(tmp_path / "train.parquet")
    loaded = load_training_data(cfg(tmp_path / "train.parquet", text_column="caption"), [])
    assert len(loaded) == 3 and loaded[(0, 1)]["pixel_values"].shape == (3, 32, 32)

    jsonl = tmp_path / "d" / "other.jsonl"
    jsonl.write_text((data / "metadata.jsonl").read_text())
    assert len(load_training_data(cfg(jsonl), ["canny"])) == 3


def test_caption_dropout_flip_and_prefix_are_seeded_by_stream_position(tmp_path):
    data = make_dataset(tmp_path / "d", n=1)
    ds = load_training_data(cfg(data, caption_dropout=0.5, random_flip=True, caption_prefix="<sce>"), [], seed=3)
    items = [ds[(p, 0)] for p in range(40)]
    captions = [it["caption"] for it in items]
    assert 5 < captions.count("") < 35 and "<sce> red circle" in captions
    flips = [bool(torch.equal(it["pixel_values"], items[0]["pixel_values"].flip(-1))) for it in items]
    assert any(flips) and not all(flips)
    again = [ds[(p, 0)]["caption"] for p in range(40)]
    assert again == captions, "same position, same draw"


def test_conditions_computed_on_the_fly_with_prepare_code(tmp_path):
    data = make_dataset(tmp_path / "d", n=2, conditions=())
    ds = load_training_data(cfg(data, compute_conditions=True), ["canny", "inpaint"])
    item = ds[(0, 0)]
    canny, inpaint = item["conditions"]
    assert canny.shape == (3, 32, 32) and set(canny.unique().tolist()) <= {0.0, 1.0}
    assert inpaint.shape == (4, 32, 32), "cut-out and mask together"
    with pytest.raises(SceditError, match="unknown condition"):
        load_training_data(cfg(data, compute_conditions=True), ["nonsense"])


def test_stream_sampler_shards_one_global_order():
    one = StreamSampler(5, seed=1, total_batch=4, accumulation=1, rank=0, world=1, start_step=0, max_steps=3)
    two = [StreamSampler(5, 1, 4, 2, r, 2, 0, 3) for r in range(2)]
    flat_one = [k for b in one for k in b]
    flat_two = sorted(k for s in two for b in s for k in b)
    assert sorted(flat_one) == flat_two and len(flat_one) == 12
    # each epoch visits every row once
    idx = [i for _, i in flat_one]
    assert sorted(idx[:5]) == list(range(5)) and sorted(idx[5:10]) == list(range(5))
    resumed = StreamSampler(5, 1, 4, 1, 0, 1, start_step=2, max_steps=3)
    assert list(resumed) == list(one)[2:]
    with pytest.raises(SceditError, match="not divisible"):
        StreamSampler(5, 1, 4, 3, 0, 1, 0, 1)


def test_collate_drops_bad_rows():
    good = {"pixel_values": torch.zeros(3, 4, 4), "caption": "a", "conditions": [], "original_size": (4, 4),
            "crop_top_left": (0, 0), "index": 0, "position": 7}
    batch = collate([good, {"skipped": "x.png: unreadable", "index": 1, "position": 8}])
    assert batch["size"] == 1 and batch["skipped"] == ["x.png: unreadable"] and batch["positions"] == [7]
