"""Aspect-ratio bucketing: train on crops near each image's own shape.

Buckets are (height, width) pairs, multiples of `step`, whose pixel count is at
most resolution² and as close to it as the step allows, with aspect ratios up
to `max_ratio`. Each image goes to the bucket nearest its aspect ratio (in log
space), is resized to cover it and cropped (centred unless data.center_crop is
off); the crop's top-left is kept for SDXL's added conditions.

Every optimizer step's batch comes from one bucket. An epoch is every bucket's
images in a seeded order, cut into batches of the total batch size (a bucket's
last batch may be shorter: no image is dropped or repeated), and the batches
in a seeded order: each image appears exactly once per epoch, and the whole
schedule is a function of (seed, step), so resuming is exact
(`samplers.BucketSampler`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


from .cells import BadSample, open_image_size
from .errors import SceditError


def bucket_sizes(resolution: int, step: int = 64, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(height, width) buckets of about resolution² pixels, sides multiples of `step`."""
    if step < 1 or resolution % step:
        raise SceditError(f"data.bucket_step {step} must divide data.resolution {resolution}; "
                          "use e.g. 64 for 512 px (8 x the VAE factor)")
    if max_ratio < 1:
        raise SceditError(f"data.bucket_max_ratio must be >= 1, got {max_ratio}")
    area = resolution * resolution
    out = set()
    for w in range(step, int(resolution * max_ratio) + 1, step):
        h = (area // w) // step * step
        if h >= step and max(h / w, w / h) <= max_ratio + 1e-9:
            out.add((h, w))
    return sorted(out, key=lambda hw: hw[0] / hw[1])


@dataclass
class BucketAssignment:
    sizes: list[tuple[int, int]]
    of_row: list[int]  # bucket index per dataset row

    def size_of(self, index: int) -> tuple[int, int]:
        return self.sizes[self.of_row[index]]

    def members(self) -> list[list[int]]:
        out = [[] for _ in self.sizes]
        for i, b in enumerate(self.of_row):
            out[b].append(i)
        return out

    def counts(self) -> dict[str, int]:
        return {f"{h}x{w}": len(m) for (h, w), m in zip(self.sizes, self.members()) if m}


def nearest_bucket(sizes: list[tuple[int, int]], height: int, width: int) -> int:
    r = math.log(height / width)
    return min(range(len(sizes)), key=lambda k: abs(math.log(sizes[k][0] / sizes[k][1]) - r))


def assign_buckets(data, step: int, max_ratio: float) -> BucketAssignment:
    """Bucket every row of a TrainDataset by its image's size (read from the header only).
    An unreadable image goes to the square bucket (the loader skips and counts it as always)."""
    sizes = bucket_sizes(data.cfg.resolution, step, max_ratio)
    square = nearest_bucket(sizes, 1, 1)
    of_row = []
    for i in range(len(data)):
        try:
            h, w = open_image_size(data.row(i).get(data.cfg.image_column), data.loaded.base_dir)
            of_row.append(nearest_bucket(sizes, h, w))
        except BadSample:
            of_row.append(square)
    return BucketAssignment(sizes, of_row)
