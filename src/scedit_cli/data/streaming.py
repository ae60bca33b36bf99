"""`data.streaming = true`: training on a `datasets` stream of a local file/folder or hub dataset.

Nothing is downloaded, converted or indexed up front; rows are read as training goes. The
order is a pure function of the seed: the global stream is epoch 0 of the source shuffled in a
seeded buffer of `data.shuffle_window` rows, then epoch 1, ... (`datasets`' `shuffle` +
`set_epoch`), and stream position p is the p-th row of it. Optimizer step s uses positions
[s*B, (s+1)*B), sliced per process and micro-step exactly as `samplers.StepSampler` does, so a
sample depends only on (seed, position) as in the indexed path: the same whatever the process
or worker count, and every row once per epoch. Each process and each DataLoader worker reads
the stream and decodes only its own rows. Resuming at step s re-reads the rows before position
s*B without opening their images (one pass over the first epoch to learn its length, then whole
epochs are skipped without reading).
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..cells import BadSample
from .table import VALIDATION_OFFSET, TrainDataset, check_columns, collate, undecoded_images
from ..datasource import LoadedDataset, stream_source
from ..errors import SceditError
from ..samplers import StepSampler

_READ_BATCH = 64  # rows per read from the stream


def load_streaming_data(cfg, conditions: list[str], seed: int = 0) -> "StreamTrainDataset":
    """`load_training_data` for `cfg.streaming`: the same column checks (from the stream's features,
    or its first row) and the same refusal when no row can be used."""
    loaded = stream_source(cfg.source, cfg.split)
    ds, where = loaded.dataset, loaded.description
    if ds.features is not None:
        cols = list(ds.features)
    else:
        first = next(iter_rows(ds, where), None)
        if first is None:
            raise SceditError(f"{where}: the dataset is empty")
        cols = list(first)
    check_columns(cfg, conditions, cols, where)
    ds = undecoded_images(ds)
    if cfg.max_samples:
        ds = ds.take(cfg.max_samples)
    data = StreamTrainDataset(LoadedDataset(ds, loaded.base_dir, where), cfg, conditions, seed)
    skipped: list[str] = []
    if not data.validation_items(1, skipped):
        if not skipped:
            raise SceditError(f"{where}: the dataset is empty")
        raise SceditError(
            f"{where}: none of its {len(skipped)} row(s) can be used ({'; '.join(skipped[:3])}); fix the paths "
            "(relative to the dataset's folder), data.image_column or data.text_column"
        )
    return data


def iter_rows(ds, where: str) -> Iterator[dict]:
    """The rows of a `datasets.IterableDataset`, all of them: `ds.iter` does not split the stream
    between DataLoader workers as iterating `ds` itself would (each worker picks its own rows here)."""
    try:
        for batch in ds.iter(batch_size=_READ_BATCH):
            cols = list(batch)
            for values in zip(*(batch[c] for c in cols)):
                yield dict(zip(cols, values))
    except SceditError:
        raise
    except Exception as e:  # datasets raises many kinds (ArrowInvalid, DatasetGenerationError, ...)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SceditError(f"{where}: cannot read the dataset stream ({first}); check the source") from None


class StreamTrainDataset(TrainDataset):
    """`data.TrainDataset` over a stream: rows come in stream order (`positions`), not by index;
    a row's index in messages is its stream position. No length, no buckets, no cache."""

    streaming = True

    def __len__(self) -> int:
        raise TypeError("a streaming dataset has no length before it is read through")

    @property
    def shard_of(self):
        return None

    def row(self, index: int) -> dict:
        raise TypeError("a streaming dataset has no random access; read it with positions()")

    def first_captions(self, limit: int = 1000) -> list[str]:
        """The captions of the first `limit` rows of the unshuffled stream (no image is opened)."""
        out = []
        for i, row in enumerate(iter_rows(self.ds.select_columns([self.cfg.text_column]), self.description)):
            if i >= limit:
                break
            out += self.captions_of(row)
        return out

    def validation_items(self, count: int, skipped: list[str] | None = None) -> list[dict]:
        """The first `count` readable rows of the unshuffled stream (as `TrainDataset.validation_items`)."""
        items = []
        if count <= 0:
            return items
        size = (self.cfg.resolution, self.cfg.resolution)
        for i, row in enumerate(iter_rows(self.ds, self.description)):
            try:
                items.append(self.load_row(row, VALIDATION_OFFSET + i, i, train=False, size=size))
            except BadSample as e:
                if skipped is not None:
                    skipped.append(str(e))
            if len(items) >= count:
                break
        return items

    def epoch_rows(self, epoch: int) -> Iterator[dict]:
        shuffled = self.ds.shuffle(seed=self.seed, buffer_size=self.cfg.shuffle_window)
        shuffled.set_epoch(epoch)
        return iter_rows(shuffled, self.description)

    def positions(self, start: int = 0) -> Iterator[tuple[int, dict]]:
        """(stream position, row) from position `start` on, endlessly (epoch after epoch)."""
        position, epoch, n = 0, 0, None
        while True:
            if n is not None and position + n <= start:  # every epoch has the first one's length
                skip = (start - position) // n
                position, epoch = position + skip * n, epoch + skip
                continue
            count = 0
            for row in self.epoch_rows(epoch):
                if position >= start:
                    yield position, row
                position, count = position + 1, count + 1
            if count == 0:
                raise SceditError(f"{self.description}: the dataset stream holds no row")
            n, epoch = count, epoch + 1


class StreamStepSampler(StepSampler):
    """The `StepSampler` geometry over stream positions: every step has B samples; a micro-batch
    is its positions (as (position, position) pairs: a stream row has no other index)."""

    def step_size(self, step: int) -> int:
        return self.B

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        p0 = step * self.B + (micro * self.W + self.r) * self.b
        return [(p, p) for p in range(p0, p0 + self.b)]


class StreamBatches(torch.utils.data.IterableDataset):
    """Collated micro-batches of one process in the sampler's order. DataLoader worker w of k makes
    micro-batches m with m % k == w; the DataLoader takes them from the workers in turn, which
    restores the order."""

    def __init__(self, data: StreamTrainDataset, sampler: StreamStepSampler):
        self.data, self.sampler = data, sampler

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows = self.data.positions(self.sampler.start * self.sampler.B)
        for m, wanted in enumerate(self.sampler):
            if m % workers != worker:
                continue
            items = []
            for p, _ in wanted:
                position, row = next(rows)
                while position < p:
                    position, row = next(rows)
                items.append(self.data.train_item(position, position, row))
            yield collate(items)


def stream_loader(data: StreamTrainDataset, train_cfg, num_workers: int, rank: int, world: int,
                  start_step: int) -> tuple[torch.utils.data.DataLoader, StreamStepSampler]:
    """`loader.training_loader` for a streaming dataset."""
    sampler = StreamStepSampler(train_cfg.batch_size, train_cfg.gradient_accumulation_steps, rank, world,
                                start_step, train_cfg.max_steps)
    loader = torch.utils.data.DataLoader(StreamBatches(data, sampler), batch_size=None, num_workers=num_workers,
                                         persistent_workers=False)
    return loader, sampler
