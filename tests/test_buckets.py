"""Aspect-ratio bucketing: sizes, one bucket per batch, every image once per epoch, training runs."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from train_helpers import make_tiny_pipeline, write_recipe
from scedit_cli.buckets import BucketAssignment, bucket_sizes, nearest_bucket
from scedit_cli.samplers import BucketSampler
from scedit_cli.errors import SceditError
from scedit_cli.training import train


def test_bucket_sizes_keep_the_pixel_count_and_ratio():
    sizes = bucket_sizes(512, 64, 2.0)
    assert (512, 512) in sizes and (384, 640) in sizes and (640, 384) in sizes
    for h, w in sizes:
        assert h % 64 == 0 and w % 64 == 0 and h * w <= 512 * 512 and max(h / w, w / h) <= 2.0
        assert (h + 64) * w > 512 * 512  # as large as the step allows
    assert sizes[nearest_bucket(sizes, 600, 1000)] == (384, 640)
    with pytest.raises(SceditError, match="bucket_step"):
        bucket_sizes(512, 48)


@pytest.mark.parametrize("batch,accum,world", [(4, 1, 1), (4, 2, 1), (6, 1, 2), (2, 2, 1)])
def test_batches_never_mix_buckets_and_each_image_comes_once_per_epoch(batch, accum, world):
    rng = np.random.default_rng(0)
    of_row = [int(b) for b in rng.integers(0, 3, 23)]
    assign = BucketAssignment([(24, 40), (32, 32), (40, 24)], of_row)
    samplers = [BucketSampler(assign, 5, batch, accum, r, world, 0, 10_000) for r in range(world)]
    per_epoch = samplers[0].per_epoch
    for epoch in range(3):
        seen = []
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            step_rows = []
            for s in samplers:
                for a in range(accum):
                    mb = s.micro_batch(step, a)
                    step_rows += mb
            assert len(step_rows) == samplers[0].step_size(step) <= batch
            assert len({of_row[i] for _, i in step_rows}) == 1  # one bucket per optimizer step
            seen += step_rows
        assert Counter(i for _, i in seen) == Counter(range(23))  # every image exactly once
        positions = sorted(p for p, _ in seen)
        assert positions == list(range(epoch * 23, (epoch + 1) * 23))  # seeds stay unique per visit
    # a function of (seed, step): a sampler started mid-way yields the same batches
    late = BucketSampler(assign, 5, batch, accum, 0, world, 7, 12)
    assert list(late) == [samplers[0].micro_batch(s, a) for s in range(7, 12) for a in range(accum)]



def test_training_with_buckets_mixed_shapes_cached_and_not(tmp_path):
    sd15 = tmp_path / "sd15"
    make_tiny_pipeline(sd15, "sd15")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(30, 50), (50, 30), (40, 40), (28, 52), (52, 28), (36, 36)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(data / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "text": f"thing {i}"})
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    losses = {}
    for cache in ("off", "build"):
        rec = write_recipe(tmp_path / f"{cache}.toml", sd15, data, {"name": "sc"}, tmp_path / cache,
                           data={"buckets": True, "bucket_step": 8, "cache": cache},
                           train={"max_steps": 4, "batch_size": 2})
        res = train(rec)
        losses[cache] = [v for _, v in res.losses]
        assert len(losses[cache]) == 4 and all(np.isfinite(losses[cache]))
    np.testing.assert_allclose(losses["off"], losses["build"], rtol=1e-5)
