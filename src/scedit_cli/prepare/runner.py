"""The `scedit prepare --condition` runner: parallel, shardable, resumable.

Layout of an output folder (what `scedit train` reads):

    metadata.jsonl            {"image": "images/<key>.<ext>", "text": ..., "<condition>": "conditions/<condition>/<key>.png"}
    metadata.parquet          same rows, with --parquet
    images/<key>.<ext>        the input image, byte-for-byte copy (or a relative symlink)
    conditions/<column>/<key>.png
    prepare-report.json       counts, skipped records and why
    .scedit-prepare/          settings, per-shard journals, staging for in-flight files

Resuming: every finished record (written or skipped) is appended to its shard's
journal after its files are renamed into place; a new run with the same
settings skips journalled records and redoes the rest. Files are only ever
renamed into place whole, and a record's file names depend only on its key, so
redoing a record overwrites rather than duplicates. Randomness is keyed by
(seed, record key), so a resumed, sharded or multi-worker run writes exactly the
bytes an uninterrupted single-worker run writes.

Sharding: `--shard i/n` takes the records whose input index is i mod n. Shards
may share one output folder (e.g. on a network file system); each writes its own
journal, and the last shard to finish merges them into metadata.jsonl.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..conditions import get_spec
from ..signals import StopFlag
from ..errors import SceditError
from ..fsutil import check_output_location, write_json_atomic, write_text_atomic
from .inputs import InputSource, open_input
from .pools import POOLS, choose_pool, run_learned, run_records
from .records import JobContext, Task
from .summary import PrepareSummary

STATE_DIR = ".scedit-prepare"


@dataclass
class PrepareConfig:
    condition: str
    input: str
    output: Path
    workers: int = 1
    shard_index: int = 0
    shard_count: int = 1
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    images: str = "copy"  # "copy" | "symlink"
    pool: str = "auto"  # "auto" | "threads" | "processes": how workers > 1 run (see `choose_pool`)
    parquet: bool = False
    split: str = "train"
    image_column: str | None = None
    text_column: str | None = None
    # learned detectors
    weights: Path | None = None
    device: str | None = None
    batch_size: int = 8


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0-based i) -> (i, n)."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise SceditError(f"--shard {text!r} must look like i/n, e.g. 0/4 for the first of four shards") from None
    if n < 1 or not 0 <= i < n:
        raise SceditError(f"--shard {text!r}: need n >= 1 and 0 <= i < n (shards are numbered from 0)")
    return i, n


class Journal:
    """Append-only record of finished records for one shard; tolerant of a torn last line."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[int, dict[str, Any]] = {}
        if path.exists():
            data = path.read_bytes()
            good = data.rfind(b"\n") + 1  # a kill mid-append leaves a partial last line: drop it
            for line in data[:good].splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.entries[entry["i"]] = entry
            if good != len(data):
                with path.open("r+b") as f:
                    f.truncate(good)
        self._f = path.open("a", encoding="utf-8")

    def append(self, entry: dict[str, Any]) -> None:
        self._f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._f.flush()  # survives the process being killed (not a power cut: then the record is redone)
        self.entries[entry["i"]] = entry

    def close(self) -> None:
        self._f.close()


def _is_within(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _check_paths(cfg: PrepareConfig, source: InputSource) -> None:
    loc = Path(source.location)
    if not loc.exists():
        return  # a datasets name from the HF cache
    # A metadata.jsonl input's images live in its folder; a parquet file holds its own images.
    root = loc.parent if loc.suffix == ".jsonl" else loc
    out = Path(cfg.output)
    if _is_within(out, root) or _is_within(root, out):
        raise SceditError(f"--output {out} overlaps the input {root}; the input is never written to: choose an output folder outside it")


def _settings(cfg: PrepareConfig, source: InputSource) -> dict[str, Any]:
    params = {k: (v if isinstance(v, (str, int, float, bool)) else repr(v)) for k, v in cfg.params.items()}
    return {
        "version": 1, "condition": cfg.condition, "params": params, "seed": cfg.seed, "images": cfg.images,
        "input": source.describe(), "shard_count": cfg.shard_count,
    }


def _check_settings(state: Path, settings: dict[str, Any], out: Path) -> None:
    path = state / "settings.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            k = diff[0]
            raise SceditError(
                f"{out} was prepared with {k}={json.dumps(old.get(k))}, this run has {k}={json.dumps(settings[k])}; "
                "resume with the same settings, or use a new --output"
            )
    else:
        if out.exists() and any(p.name != STATE_DIR for p in out.iterdir()):
            raise SceditError(f"--output {out} exists and is not a `scedit prepare` folder; choose a new or empty folder")
        write_json_atomic(path, settings)


def _shard_tasks(source: InputSource, cfg: PrepareConfig, done: set[int]) -> Iterator[Task]:
    for rec in source.records():
        if rec.index % cfg.shard_count != cfg.shard_index or rec.index in done:
            continue
        yield Task(rec.index, rec.key, rec.text, rec.source, str(rec.path) if rec.path else None, rec.data, rec.extra)


def _shard_size(count: int, cfg: PrepareConfig) -> int:
    return len(range(cfg.shard_index, count, cfg.shard_count))


def _validate_params(cfg: PrepareConfig) -> bool:
    """Fail before any work on bad settings; returns whether records draw random settings."""
    from PIL import Image

    from ..conditions import compute_condition_maps, record_rng

    spec = get_spec(cfg.condition)
    random = spec.random_without_params and not cfg.params
    if not spec.learned:
        compute_condition_maps(cfg.condition, Image.new("RGB", (64, 64)), rng=record_rng(cfg.seed, "check") if random else None, params=cfg.params)
    elif set(cfg.params) - set(spec.params):
        bad = sorted(set(cfg.params) - set(spec.params))
        raise SceditError(f"condition '{spec.name}' has no setting {', '.join(map(repr, bad))}; its settings are: {', '.join(spec.params)}")
    return random


def _merge_if_complete(out: Path, state: Path, cfg: PrepareConfig) -> dict[str, Any] | None:
    n = cfg.shard_count
    reports = []
    for i in range(n):
        p = state / f"done-{i}-of-{n}.json"
        if not p.exists():
            return None
        reports.append(json.loads(p.read_text(encoding="utf-8")))
    entries: dict[int, dict] = {}
    for i in range(n):
        entries.update(_read_journal(state / f"journal-{i}-of-{n}.jsonl"))
    rows = [entries[i]["row"] for i in sorted(entries) if "row" in entries[i]]
    write_text_atomic(out / "metadata.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if cfg.parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..fsutil import atomic_path

        keys = list(dict.fromkeys(k for r in rows for k in r))
        table = pa.table({k: [r.get(k) for r in rows] for k in keys})
        with atomic_path(out / "metadata.parquet") as tmp:
            pq.write_table(table, tmp)
    skipped = [{k: e[k] for k in ("source", "skip", "reason")} for i, e in sorted(entries.items()) if "skip" in e]
    report = {
        "condition": cfg.condition,
        "input": reports[0]["input"],
        "shards": n,
        "records_in": sum(r["records_in_shard"] for r in reports),
        "rows_out": len(rows),
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(s["skip"] for s in skipped)),
        "skipped_records": skipped,
        "metadata": str(out / "metadata.jsonl"),
    }
    write_json_atomic(out / "prepare-report.json", report)
    return report


def _read_journal(path: Path) -> dict[int, dict]:
    if not path.exists():
        return {}
    j = Journal(path)
    j.close()
    return j.entries


def run_prepare(cfg: PrepareConfig, progress_factory: Callable[[], Any] | None = None) -> PrepareSummary:
    """Prepare (or resume preparing) one shard of a condition dataset; returns the summary."""
    spec = get_spec(cfg.condition)
    if cfg.workers < 1:
        raise SceditError(f"--workers must be >= 1, got {cfg.workers}")
    if cfg.batch_size < 1:
        raise SceditError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.pool not in POOLS:
        raise SceditError(f"--pool must be one of {', '.join(POOLS)}, got {cfg.pool!r}")
    if cfg.images not in ("copy", "symlink"):
        raise SceditError(f"--images must be copy or symlink, got {cfg.images!r}")
    random = _validate_params(cfg)
    source = open_input(cfg.input, split=cfg.split, image_column=cfg.image_column, text_column=cfg.text_column)
    if cfg.images == "symlink" and source.kind not in ("folder", "jsonl"):
        raise SceditError(f"--images symlink needs image files on disk; the {source.kind} input {source.location} holds image bytes: use --images copy")
    out = check_output_location(cfg.output, "--output")
    _check_paths(cfg, source)
    if spec.learned:
        from ..conditions import detectors

        # missing weights: fail before any output
        detector = detectors.get_detector(cfg.condition, weights=cfg.weights, device=cfg.device)
    state = out / STATE_DIR
    settings = _settings(cfg, source)
    _check_settings(state, settings, out)
    tag = f"{cfg.shard_index}-of-{cfg.shard_count}"
    staging = state / f"staging-{tag}"
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of a killed run of this shard
    staging.mkdir(parents=True)
    for column in spec.columns:
        (out / "conditions" / column).mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)

    journal = Journal(state / f"journal-{tag}.jsonl")
    resumed = len(journal.entries)
    total = _shard_size(source.count, cfg)
    pool = "threads" if spec.learned else choose_pool(cfg.pool, cfg.workers, total - resumed)
    ctx = JobContext(cfg.condition, spec.columns, dict(cfg.params), cfg.seed, random, str(out), str(staging), cfg.images)
    counts: Counter = Counter()
    start = time.perf_counter()
    from ..console import progress as default_progress

    bar = (progress_factory or default_progress)()
    try:
        # Ctrl-C becomes a flag checked between chunks (see StopFlag), then KeyboardInterrupt at that safe point.
        with bar, StopFlag((signal.SIGINT,), second_sigint_aborts=False) as stop:
            task_id = bar.add_task(f"prepare {cfg.condition}", total=total, completed=resumed)

            def on_entry(entry: dict) -> None:
                journal.append(entry)
                counts["written" if "row" in entry else "skipped"] += 1
                bar.advance(task_id)

            tasks = _shard_tasks(source, cfg, set(journal.entries))
            if spec.learned:
                resolution = int(cfg.params["detect_resolution"]) if "detect_resolution" in cfg.params else None
                run_learned(ctx, detector, resolution, cfg.batch_size, cfg.workers, tasks, on_entry, stop)
            else:
                run_records(ctx, tasks, cfg.workers, pool, on_entry, stop)
            if stop.requested:
                raise KeyboardInterrupt
    finally:
        journal.close()
    elapsed = time.perf_counter() - start
    shutil.rmtree(staging, ignore_errors=True)

    entries = journal.entries
    skipped = [e for e in entries.values() if "skip" in e]
    summary = PrepareSummary(
        condition=cfg.condition, input=source.describe(), shard=f"{cfg.shard_index}/{cfg.shard_count}",
        records_in_shard=total, resumed=resumed, written_this_run=counts["written"],
        skipped_this_run=counts["skipped"], rows_out=len(entries) - len(skipped), skipped=len(skipped),
        skipped_by_reason=dict(Counter(e["skip"] for e in skipped)), ignored_files=source.ignored,
        seconds=round(elapsed, 3),
        images_per_second=round((counts["written"] + counts["skipped"]) / elapsed, 2) if elapsed > 0 else None,
        workers=cfg.workers, pool=pool,
    )
    write_json_atomic(state / f"done-{tag}.json", summary.shard_record())
    merged = _merge_if_complete(out, state, cfg)
    summary.metadata = merged["metadata"] if merged else None
    summary.waiting_for_shards = None if merged else [
        i for i in range(cfg.shard_count) if not (state / f"done-{i}-of-{cfg.shard_count}.json").exists()
    ]
    summary.skipped_records = [{k: e[k] for k in ("source", "skip", "reason")} for e in sorted(skipped, key=lambda e: e["i"])]
    return summary
