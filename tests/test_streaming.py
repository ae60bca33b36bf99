"""`data.streaming = true`: a seeded stream order, each row once per epoch over ranks and workers,
exact resume, bad rows skipped and counted, and the one-line refusals."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.data import load_training_data
from scedit_cli.errors import SceditError
from scedit_cli.loader import training_loader
from scedit_cli.recipes import DataSection, TrainSection, load_recipe


def captioned(folder: Path, n: int, bad: int | None = None) -> Path:
    """make_dataset's folder with caption "row i" per row; row `bad` points at a missing image."""
    make_dataset(folder, n=n, conditions=())
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r["text"] = f"row {i}"
        if i == bad:
            r["image"] = "images/missing.png"
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def stream_cfg(source, **kw) -> DataSection:
    return DataSection(source=str(source), resolution=16, streaming=True, shuffle_window=3, **kw)


def captions(data, count: int, seed_start: int = 0) -> list[str]:
    out = []
    for position, row in data.positions(seed_start):
        if len(out) == count:
            return out
        out.append(row["text"])


def test_stream_order_is_a_pure_function_of_the_seed(tmp_path):
    src = captioned(tmp_path / "d", 7)
    jsonl = tmp_path / "d" / "rows.jsonl"  # a single .jsonl file source (paths relative to its folder)
    jsonl.write_text((src / "metadata.jsonl").read_text())
    a = captions(load_training_data(stream_cfg(jsonl), [], seed=5), 21)
    assert a == captions(load_training_data(stream_cfg(jsonl), [], seed=5), 21)
    assert a != captions(load_training_data(stream_cfg(jsonl), [], seed=6), 21)
    for e in range(3):  # every epoch is a permutation of the rows, and epochs differ
        assert sorted(a[7 * e: 7 * e + 7]) == sorted(f"row {i}" for i in range(7))
    assert a[:7] != a[7:14]
    data = load_training_data(stream_cfg(jsonl), [], seed=5)
    assert captions(data, 9, seed_start=12) == a[12:21]  # resume skips to the position exactly
    assert data.first_captions(3) == ["row 0", "row 1", "row 2"]  # the unshuffled stream
    assert [it["caption"] for it in data.validation_items(2)] == ["row 0", "row 1"]


def _positions_and_captions(data, train, workers, rank, world, start=0):
    loader, sampler = training_loader(data, train, workers, rank, world, start)
    batches = list(loader)
    assert all(sampler.step_size(s) == train.batch_size for s in range(train.max_steps))
    return [(p, c) for b in batches for p, c in zip(b["positions"], b["captions"])], batches


def test_two_ranks_two_workers_see_each_row_once_per_epoch_and_resume_exactly(tmp_path):
    data = load_training_data(stream_cfg(captioned(tmp_path / "d", 5)), [], seed=3)
    train = TrainSection(max_steps=5, batch_size=8, gradient_accumulation_steps=2, seed=3)
    seen = {}
    for rank in range(2):
        got, batches = _positions_and_captions(data, train, 2, rank, 2)
        single, single_batches = _positions_and_captions(data, train, 0, rank, 2)
        assert got == single  # the worker count changes nothing
        assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(batches, single_batches))
        seen.update(got)
        tail, _ = _positions_and_captions(data, train, 2, rank, 2, start=3)
        assert tail == [(p, c) for p, c in got if p >= 3 * 8]  # resume at step 3
    assert sorted(seen) == list(range(40))
    order = [seen[p] for p in range(40)]
    for e in range(8):
        assert sorted(order[5 * e: 5 * e + 5]) == [f"row {i}" for i in range(5)]
    assert order == captions(data, 40)


def test_parquet_source_with_image_bytes(tmp_path):
    import datasets

    src = captioned(tmp_path / "d", 3)
    rows = [json.loads(line) for line in (src / "metadata.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": (src / r["image"]).read_bytes(), "path": None} for r in rows],
         "text": [r["text"] for r in rows]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}))
    ds.to_parquet(tmp_path / "train.parquet")
    data = load_training_data(stream_cfg(tmp_path / "train.parquet"), [], seed=3)
    # (the shuffled epochs are not read here: datasets pauses 5 s after each shuffled parquet pass)
    items = data.validation_items(3)
    assert [it["caption"] for it in items] == ["row 0", "row 1", "row 2"]
    assert items[0]["pixel_values"].shape == (3, 16, 16)


def test_bad_rows_are_skipped_and_counted(tmp_path):
    data = load_training_data(stream_cfg(captioned(tmp_path / "d", 4, bad=2)), [], seed=0)
    train = TrainSection(max_steps=4, batch_size=2, seed=0)
    loader, _ = training_loader(data, train, 0, 0, 1, 0)
    batches = list(loader)
    skipped = [s for b in batches for s in b["skipped"]]
    assert len(skipped) == 2 and all("missing.png" in s for s in skipped)  # 8 positions = 2 epochs of 4
    assert sum(b["size"] for b in batches) == 6


def test_refusals_are_one_line(tmp_path):
    src = captioned(tmp_path / "d", 2)
    base = {"model": {"source": "x"}, "data": {"source": str(src), "streaming": True}, "method": {"name": "sc"},
            "train": {"output_dir": str(tmp_path / "o")}}
    for key, value, needle in (("buckets", True, "data.buckets"), ("cache", "build", "data.cache = 'build'")):
        r = json.loads(json.dumps(base))
        r["data"][key] = value
        with pytest.raises(SceditError, match="data.streaming") as e:
            load_recipe(r)
        assert needle in str(e.value) and "\n" not in str(e.value)
    from scedit_cli.cache import attach_cache

    data = load_training_data(stream_cfg(src), [], seed=0)
    assert attach_cache("auto", "", data, None, "cpu")[1].startswith("cache: not used (streaming")
    (tmp_path / "s").mkdir()
    for k in range(2):
        tarfile.open(tmp_path / "s" / f"a-{k:03d}.tar", "w").close()
    with pytest.raises(SceditError, match="data.streaming = false") as e:
        load_training_data(stream_cfg(tmp_path / "s" / "a-{000..001}.tar"), [])
    assert "\n" not in str(e.value)
    with pytest.raises(SceditError, match="no column 'caption'"):
        load_training_data(stream_cfg(src, text_column="caption"), [])


def test_streaming_trains_and_resumes_bit_identically(tmp_path):
    from scedit_cli.training import train

    make_tiny_pipeline(tmp_path / "sd15", "sd15")
    captioned(tmp_path / "data", 3)
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "sd15", tmp_path / "data", {"name": "sc"}, tmp_path / "u",
                          train={"max_steps": 4, "batch_size": 2}, checkpoint={"every": 2, "keep_last": 2},
                          data={"streaming": True, "shuffle_window": 2, "random_flip": True})
    ref = train(recipe, overrides=[f'train.output_dir="{tmp_path / "ref"}"'])
    assert ref.steps == 4 and len(ref.losses) >= 4
    part = tmp_path / "part"
    train(recipe, overrides=[f'train.output_dir="{part}"', "train.max_steps=2"])
    resumed = train(recipe, overrides=[f'train.output_dir="{part}"'], resume="latest")
    assert resumed.resumed_from and resumed.steps == 4
    a, b = load_file(tmp_path / "ref" / "tuner" / "tuner.safetensors"), load_file(part / "tuner" / "tuner.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plan = train(recipe, overrides=[f'train.output_dir="{tmp_path / "dry"}"'], dry_run=True).plan
    assert plan.dataset_streaming and plan.dataset_size is None and "epochs" not in plan.to_dict()
