"""What `scedit prepare --condition` reports for one shard (`--json` prints `to_dict()`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Facts of the whole dataset, known only once every shard is done: not part of a shard's done-file.
_DATASET_KEYS = ("metadata", "waiting_for_shards", "skipped_records", "webdataset")


@dataclass
class PrepareSummary:
    condition: str
    input: str
    shard: str  # "i/n"
    records_in_shard: int
    resumed: int
    written_this_run: int
    skipped_this_run: int
    rows_out: int
    skipped: int
    skipped_by_reason: dict[str, int]
    ignored_files: int
    seconds: float
    images_per_second: float | None
    workers: int
    pool: str
    metadata: str | None = None  # metadata.jsonl once every shard is done
    waiting_for_shards: list[int] | None = None  # the shards still missing
    skipped_records: list[dict[str, Any]] = field(default_factory=list)
    webdataset: dict[str, Any] | None = None  # {"shards", "samples"} with --output-format webdataset

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.webdataset is None:
            del d["webdataset"]
        return d

    def shard_record(self) -> dict[str, Any]:
        """The shard's own facts (its done-file, which the merge reads)."""
        return {k: v for k, v in asdict(self).items() if k not in _DATASET_KEYS}
