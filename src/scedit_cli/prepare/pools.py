"""How prepare runs its records: inline, in threads or in processes (`choose_pool`), or in batches through one
learned detector. Each stops at a safe point when its StopFlag is set (see `signals.StopFlag` for why a flag)."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import multiprocessing
import os
from typing import Any, Callable, Iterator

from ..conditions import get_spec
from ..signals import StopFlag
from .records import (JobContext, Skip, Task, init_worker, load_image, process, process_chunk, process_in_worker, skip_entry,
                      write_outputs)


# Spawning a worker process costs ~0.5 s of CPU (a fresh interpreter importing numpy, Pillow and OpenCV),
# as much as ~80 canny or ~150 colour records at 512 px. Decoding, the OpenCV op and PNG encoding release
# the GIL (~80% of a canny record's CPU time, ~60% of a colour one's), so two threads in this process keep
# two cores busy from the first record; past two the GIL limits them, and long runs get processes.
PROCESS_MIN_RECORDS_PER_WORKER = 256
POOLS = ("auto", "threads", "processes")


def choose_pool(pool: str, workers: int, records: int) -> str:
    """'inline' (one worker), 'threads' or 'processes' for `records` records to do."""
    if workers == 1 or pool != "auto":
        return "inline" if workers == 1 else pool
    return "processes" if workers > 2 and records >= workers * PROCESS_MIN_RECORDS_PER_WORKER else "threads"


def run_records(ctx: JobContext, tasks: Iterator[Task], workers: int, kind: str, on_entry: Callable[[dict], None],
                stop: StopFlag) -> None:
    if kind == "inline":
        for t in tasks:
            if stop.requested:
                return
            on_entry(process(ctx, t))
        return
    if kind == "threads":
        import cv2

        cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # one OpenCV thread per worker thread: parallelism comes from the workers
        pool: cf.Executor = cf.ThreadPoolExecutor(workers, thread_name_prefix="prepare")
        work = functools.partial(process_chunk, ctx)
    else:
        # spawn, not fork: the parent may hold torch/OpenMP state that a forked child would deadlock on.
        # Workers end with this process even when it is killed with SIGKILL (`records.die_with_parent`); the
        # resource tracker that spawn starts then sees its last user gone and ends too.
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                                      initargs=(ctx, os.getpid()))
        work = process_in_worker
    chunk = 4  # records per submit: amortises pickling/IPC, small enough to keep the journal close behind
    limit = workers * 4  # bounded in-flight chunks: 600k records never sit in memory at once
    inflight: set[cf.Future] = set()
    try:
        exhausted = False
        while True:
            while not exhausted and len(inflight) < limit:
                batch = list(itertools.islice(tasks, chunk))
                if len(batch) < chunk:
                    exhausted = True
                if batch:
                    inflight.add(pool.submit(work, batch))
            if not inflight:
                break
            finished, inflight = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
            for f in finished:
                for entry in f.result():
                    on_entry(entry)
            if stop.requested:  # chunks not started are cancelled; running ones finish unrecorded
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if kind == "threads":
            cv2.setNumThreads(cv2_threads)


def run_learned(ctx: JobContext, detector: Any, resolution: int | None, batch_size: int, workers: int,
                tasks: Iterator[Task], on_entry: Callable[[dict], None], stop: StopFlag) -> None:
    """Learned detectors: one model on the device, batches of records; decode and writes in threads."""
    spec = get_spec(ctx.condition)
    with cf.ThreadPoolExecutor(max(1, workers)) as io_pool:
        while not stop.requested:
            batch = [t for _, t in zip(range(batch_size), tasks)]
            if not batch:
                break
            loaded = list(io_pool.map(_try_load, batch))
            ok = [(t, r) for t, r in zip(batch, loaded) if not isinstance(r, Skip)]
            maps = detector.run([r[0] for _, r in ok], detect_resolution=resolution) if ok else []
            rows = io_pool.map(lambda a: write_outputs(ctx, a[0][0], a[0][1][1], a[0][1][2], {spec.primary: a[1]}), zip(ok, maps))
            rows_by_index = {t.index: row for (t, _), row in zip(ok, rows)}
            for t, r in zip(batch, loaded):
                on_entry(skip_entry(t, r) if isinstance(r, Skip) else {"i": t.index, "key": t.key, "row": rows_by_index[t.index]})


def _try_load(task: Task):
    try:
        return load_image(task)
    except Skip as e:
        return e
