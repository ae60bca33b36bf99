"""Per-record work of `scedit prepare`: decode, compute the maps, write the files.

These functions run in worker processes (spawned, so they import only what they
need: OpenCV, numpy, Pillow; never torch for the non-learned conditions). Every
file goes to a per-shard staging folder first and is renamed into place, so a
killed run leaves only whole files in the dataset, and its leftovers sit in one
folder that the next run of the same shard can clear without touching the
in-flight files of other shards writing to the same output.
"""

from __future__ import annotations

import io
import os
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

from ..images import to_rgb8

# zlib level of the condition PNGs. Measured on 512 px maps (benchmarks/bench_prepare.py): level 1 encodes
# a 1-bit canny map in ~1.4 ms (9 KB) against ~3.8 ms (7.9 KB) at Pillow's default 6, a palette colour
# map in ~1.1 ms (3.8 KB) against ~2.6 ms (1.7 KB), an inpaint cut-out in ~25 ms against ~60 ms for
# ~11% more bytes; 7-9 cost several times more for a few % less.
PNG_COMPRESS_LEVEL = 1

_FORMAT_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "MPO": ".jpg"}


@dataclass
class Task:
    """One record, in the picklable form sent to workers."""

    index: int
    key: str
    text: str
    source: str
    path: str | None = None
    data: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobContext:
    condition: str
    columns: tuple[str, ...]
    params: dict[str, Any]
    seed: int
    random: bool  # draw random training settings per record
    output: str
    staging: str
    images: str  # "copy" or "symlink"


class Skip(Exception):
    """A record that cannot be used (missing, unreadable, corrupt): counted, reported, skipped."""

    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category = category


def load_image(task: Task) -> tuple[Image.Image, bytes, str]:
    """Decode the record's image fully; returns (RGB image, encoded bytes, file extension)."""
    raw = task.data
    if raw is None:
        try:
            raw = Path(task.path).read_bytes()
        except FileNotFoundError:
            raise Skip("missing", "file not found") from None
        except OSError as e:
            raise Skip("unreadable", f"cannot read file: {e.strerror or e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            fmt = img.format
            img.load()  # decode now: truncated files fail here, not later
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Skip("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise Skip("unsupported", "not an image in a format Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise Skip("corrupt", f"cannot decode: {e}") from None
    try:
        rgb = to_rgb8(img)
    except ValueError as e:
        raise Skip("unsupported", str(e)) from None
    if rgb.width < 1 or rgb.height < 1:
        raise Skip("corrupt", "image has zero size")
    ext = Path(task.path).suffix.lower() if task.path and task.data is None else _FORMAT_EXT.get(fmt or "", ".img")
    return rgb, raw, ext


def _place(dest: Path, staging: Path, write: Callable[[Path], None]) -> None:
    tmp = staging / f"{uuid.uuid4().hex}{dest.suffix}"
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_outputs(ctx: JobContext, task: Task, raw: bytes, ext: str, maps: dict[str, Image.Image]) -> dict[str, Any]:
    """Write the image and its maps; return the metadata row (paths relative to the output)."""
    out, staging = Path(ctx.output), Path(ctx.staging)
    image_rel = f"images/{task.key}{ext}"
    dest = out / image_rel
    if ctx.images == "symlink":
        target = os.path.relpath(Path(task.path).resolve(), dest.parent.resolve())
        _place(dest, staging, lambda tmp: os.symlink(target, tmp))
    else:
        _place(dest, staging, lambda tmp: tmp.write_bytes(raw))
    row: dict[str, Any] = {"image": image_rel, "text": task.text}
    for column in ctx.columns:
        rel = f"conditions/{column}/{task.key}.png"
        _place(out / rel, staging, lambda tmp, im=maps[column]: im.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL))
        row[column] = rel
    for k, v in task.extra.items():
        row.setdefault(k, v)
    return row


def skip_entry(task: Task, err: Skip) -> dict[str, Any]:
    return {"i": task.index, "key": task.key, "skip": err.category, "reason": str(err), "source": task.source}


def process(ctx: JobContext, task: Task) -> dict[str, Any]:
    """Full work for one record of a non-learned condition; returns its journal entry."""
    from ..conditions import compute_condition_maps, record_rng

    try:
        image, raw, ext = load_image(task)
    except Skip as e:
        return skip_entry(task, e)
    rng = record_rng(ctx.seed, task.key) if ctx.random else None
    maps = compute_condition_maps(ctx.condition, image, rng=rng, params=ctx.params, compact=True)
    return {"i": task.index, "key": task.key, "row": write_outputs(ctx, task, raw, ext, maps)}


# --- worker-process plumbing -------------------------------------------------
_WORKER_CTX: JobContext | None = None


def die_with_parent(parent_pid: int) -> None:
    """End this process when `parent_pid` ends, even by SIGKILL, which leaves the parent no chance to stop it.

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Elsewhere: a
    thread that polls the parent pid once a second. Either way, a parent already gone ends us now.
    """
    import signal

    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        import threading
        import time

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def init_worker(ctx: JobContext, parent_pid: int) -> None:
    import signal

    die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the parent stops the pool and says what was kept.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _WORKER_CTX
    _WORKER_CTX = ctx
    import cv2

    # One OpenCV thread per worker process: parallelism comes from the processes.
    cv2.setNumThreads(1)


def process_chunk(ctx: JobContext, tasks: list[Task]) -> list[dict[str, Any]]:
    """A small chunk of records per call: fewer round trips per image (inter-process or inter-thread)."""
    return [process(ctx, t) for t in tasks]


def process_in_worker(tasks: list[Task]) -> list[dict[str, Any]]:
    assert _WORKER_CTX is not None
    return process_chunk(_WORKER_CTX, tasks)
