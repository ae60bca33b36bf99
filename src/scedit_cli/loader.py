"""The training DataLoader: which sampler feeds it, how it batches and how many workers read.

The training loop asks for one process's micro-batches from a start step on; this
module decides how they are drawn (`samplers.StreamSampler` for one resolution,
`samplers.BucketSampler` for aspect-ratio buckets,
`samplers.ShardStreamSampler` for webdataset shards, `streaming.StreamBatches` for
`data.streaming`), so data sources can grow here
without touching the loop.
"""

from __future__ import annotations

import torch

from .data import collate
from .samplers import BucketSampler, ShardStreamSampler, StepSampler, StreamSampler


def training_loader(data, train_cfg, num_workers: int, rank: int, world: int,
                    start_step: int) -> tuple[torch.utils.data.DataLoader, StepSampler]:
    """Process `rank` of `world`'s loader over `data` (a `data.TrainDataset`) from optimizer step
    `start_step` to `train_cfg.max_steps`, and its sampler (the loop reads `step_size(step)` from it)."""
    if getattr(data, "streaming", False):
        from .data.streaming import stream_loader

        return stream_loader(data, train_cfg, num_workers, rank, world, start_step)
    args = (train_cfg.seed, train_cfg.batch_size, train_cfg.gradient_accumulation_steps, rank, world, start_step,
            train_cfg.max_steps)
    if data.buckets is not None:
        sampler = BucketSampler(data.buckets, *args)
    elif data.shard_of is not None:
        sampler = ShardStreamSampler(data.shard_of, data.cfg.shuffle_window, *args)
    else:
        sampler = StreamSampler(len(data), *args)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                         persistent_workers=False)
    return loader, sampler
