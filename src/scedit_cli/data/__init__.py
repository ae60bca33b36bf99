"""Training data: a table of rows read with random access (`table`), or a `datasets` stream
(`streaming`, for `data.streaming = true`). Both give the same samples for the same stream
position: every random choice is seeded by (seed, position), whatever the worker count, process
count or resume point; an unreadable image is skipped and counted, never a crash.
"""

from __future__ import annotations

from ..cells import BadSample
from .table import (VALIDATION_OFFSET, TrainDataset, check_columns, collate, condition_column, load_table_data,
                    pixel_tensor, undecoded_images)

__all__ = ["BadSample", "TrainDataset", "VALIDATION_OFFSET", "check_columns", "collate", "condition_column",
           "load_training_data", "pixel_tensor", "undecoded_images"]


def load_training_data(cfg, conditions: list[str], seed: int = 0):
    """The training data `cfg` (a recipe's `DataSection`) names, its columns checked for `conditions`:
    a `table.TrainDataset`, or with `cfg.streaming` a `streaming.StreamTrainDataset`."""
    if cfg.streaming:
        from .streaming import load_streaming_data

        return load_streaming_data(cfg, conditions, seed)
    return load_table_data(cfg, conditions, seed)
