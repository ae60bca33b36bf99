"""Which rows each optimizer step trains on: (stream position, row index) micro-batches per process.

The stream is a function of (seed, step) only, so resuming, gradient accumulation and
the number of processes do not change what a step sees (`BucketSampler` is the same
contract with one aspect-ratio bucket per step, over `buckets.BucketAssignment`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import SceditError


class StepSampler(torch.utils.data.Sampler):
    """Micro-batches of (stream position, row index) for one process, from `start_step` on.

    Optimizer step s has a batch of `step_size(s)` samples (at most B, the total batch);
    micro-step a of process r takes its slice ((a*W + r)*b, +b). Subclasses say which
    rows a step uses (`micro_batch`, `step_size`); the batch geometry and iteration are here.
    """

    def __init__(self, total_batch: int, accumulation: int, rank: int, world: int, start_step: int,
                 max_steps: int):
        per = total_batch // (accumulation * world)
        if per * accumulation * world != total_batch:
            raise SceditError(
                f"train.batch_size {total_batch} is not divisible by {world} process(es) x "
                f"{accumulation} accumulation step(s); change train.batch_size or train.gradient_accumulation_steps"
            )
        self.B, self.A, self.r, self.W, self.b = total_batch, accumulation, rank, world, per
        self.start, self.max_steps = start_step, max_steps

    def step_size(self, step: int) -> int:
        raise NotImplementedError

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    def __iter__(self):
        for step in range(self.start, self.max_steps):
            for a in range(self.A):
                yield self.micro_batch(step, a)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start) * self.A


class StreamSampler(StepSampler):
    """The stream is the concatenation of per-epoch permutations seeded by (seed, epoch); optimizer
    step s uses stream positions [s*B, (s+1)*B)."""

    def __init__(self, n: int, seed: int, total_batch: int, accumulation: int, rank: int, world: int,
                 start_step: int, max_steps: int):
        super().__init__(total_batch, accumulation, rank, world, start_step, max_steps)
        self.n, self.seed = n, seed
        self._perm_epoch, self._perm = -1, None

    def step_size(self, step: int) -> int:
        return self.B

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._perm_epoch:
            self._perm = self.permutation(epoch)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 12345]).permutation(self.n)

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        p0 = step * self.B + (micro * self.W + self.r) * self.b
        return [(p, self._index(p)) for p in range(p0, p0 + self.b)]


class BucketSampler(StepSampler):
    """Micro-batches of (stream position, row index), each optimizer step's batch from one bucket.

    The `samplers.StepSampler` contract, with a bucket's last batch shorter (its micro-batches
    shorter or empty); `step_size(s)` is that step's total batch.
    """

    def __init__(self, buckets, seed: int, total_batch: int, accumulation: int, rank: int,
                 world: int, start_step: int, max_steps: int):
        super().__init__(total_batch, accumulation, rank, world, start_step, max_steps)
        self.members = [m for m in buckets.members() if m]
        self.n = sum(len(m) for m in self.members)
        self.seed = seed
        self.per_epoch = sum(math.ceil(len(m) / total_batch) for m in self.members)
        self._epoch, self._batches = -1, None

    def epoch_batches(self, epoch: int) -> list[tuple[int, list[int]]]:
        """The epoch's batches in order, each as (stream position of its first sample, row indices)."""
        if epoch != self._epoch:
            chunks = []
            for k, m in enumerate(self.members):
                perm = np.random.default_rng([self.seed, epoch, 777, k]).permutation(len(m))
                rows = [m[i] for i in perm]
                chunks += [rows[i: i + self.B] for i in range(0, len(rows), self.B)]
            order = np.random.default_rng([self.seed, epoch, 778]).permutation(len(chunks))
            out, pos = [], epoch * self.n
            for j in order:
                out.append((pos, chunks[j]))
                pos += len(chunks[j])
            self._epoch, self._batches = epoch, out
        return self._batches

    def step_batch(self, step: int) -> tuple[int, list[int]]:
        epoch, j = divmod(step, self.per_epoch)
        return self.epoch_batches(epoch)[j]

    def step_size(self, step: int) -> int:
        return len(self.step_batch(step)[1])

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        p0, rows = self.step_batch(step)
        lo = (micro * self.W + self.r) * self.b
        return [(p0 + i, rows[i]) for i in range(lo, min(lo + self.b, len(rows)))]

class ShardStreamSampler(StreamSampler):
    """`StreamSampler` whose per-epoch order keeps tar shards together, so that a process reads few
    shards at a time: the shards in a seeded order, each one's rows in tar order, then shuffled
    inside consecutive windows of `window` rows. Still a permutation per epoch, a pure function of
    (seed, epoch): every row once per epoch, whatever the process and worker counts."""

    def __init__(self, shard_of, window: int, *args):
        self.shard_of = np.asarray(shard_of)
        self.window = max(1, int(window))
        super().__init__(len(self.shard_of), *args)

    def permutation(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch, 4242]).permutation(int(self.shard_of.max()) + 1)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        rows = np.argsort(rank[self.shard_of], kind="stable")  # shards in seeded order, rows in tar order
        for k, lo in enumerate(range(0, self.n, self.window)):
            w = rows[lo: lo + self.window]
            rows[lo: lo + self.window] = w[np.random.default_rng([self.seed, epoch, 4243, k]).permutation(len(w))]
        return rows
