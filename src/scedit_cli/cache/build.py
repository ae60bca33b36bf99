"""Building the cache: encode what a plan lacks (`scedit prepare cache`, or `data.cache = 'build'`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import SceditError
from ..fsutil import check_output_location
from ..models import text_embeddings
from ..precision import cast_encoders, resolve_frozen_dtype
from .plan import CachePlan, check_cacheable, default_cache_dir, make_plan
from .store import CacheStore


@dataclass
class BuildStats:
    folder: str
    images: int = 0  # image entries encoded in this run (a flipped variant counts as one)
    texts: int = 0
    conditions: int = 0
    unusable: int = 0
    already: int = 0  # entries found in the cache
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CacheSummary:
    """What `scedit prepare cache` reports; `to_dict()` (the build's counts first) is its `--json` form."""

    stats: BuildStats
    entries: int  # what the recipe's data needs
    missing: int  # still not in the cache (other shards)
    device: str
    buckets: dict | None
    seconds: float
    # image entries (VAE encodes) this run per second of the whole encode, captions and maps included
    images_per_second: float | None

    def to_dict(self) -> dict:
        d = self.stats.to_dict()
        d.update((k, v) for k, v in self.__dict__.items() if k != "stats")
        return d


def build_cache(plan: CachePlan, data, base, device, *, batch_size: int = 8, chunk: int = 256,
                shard: tuple[int, int] = (0, 1), on_progress: Callable[[int, int], None] | None = None
                ) -> BuildStats:
    """Encode every entry of `plan` missing from its folder (this shard's part), `batch_size` at a time,
    writing a file every `chunk` entries. `on_progress(done, total)` after each batch."""
    store = CacheStore(plan.folder)
    si, sn = shard
    mine = lambda key: int(key[:8], 16) % sn == si  # noqa: E731  (stable whatever the dataset order)
    img_jobs = [(i, k, flip) for i, r in enumerate(plan.rows) for k, flip in ((r.image_key, False), (r.flip_key, True))
                if k and mine(k)]
    cond_jobs = [(i, r.cond_key) for i, r in enumerate(plan.rows) if r.cond_key and mine(r.cond_key)]
    txt_jobs = [(c, k) for c, k in plan.captions.items() if mine(k)]
    every = [*img_jobs, *cond_jobs, *txt_jobs]
    todo = [j for j in every if j[1] not in store]
    w = _Writer(store, BuildStats(str(plan.folder), already=len(every) - len(todo)), chunk, len(todo), on_progress)
    device = torch.device(device)
    with torch.no_grad():
        _encode_images([j for j in img_jobs if j[1] not in store], plan, data, base.vae, device, batch_size, w)
        _encode_conditions([j for j in cond_jobs if j[1] not in store], data, w)
        _encode_texts([j for j in txt_jobs if j[1] not in store], base, device, batch_size, w)
    return w.stats


class _Writer:
    """Collects encoded entries (and unusable samples) and writes them a file per `chunk`; counts progress."""

    def __init__(self, store: CacheStore, stats: BuildStats, chunk: int, total: int,
                 on_progress: Callable[[int, int], None] | None):
        self.store, self.stats, self.chunk, self.total, self.on_progress = store, stats, chunk, total, on_progress
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.bad: dict[str, str] = {}
        self.done = 0
        self.advance(0)

    def add(self, key: str, entry: dict[str, torch.Tensor], kind: str) -> None:
        self.pending[key] = entry
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)

    def unusable(self, key: str, why: str) -> None:
        self.bad[key] = why
        self.stats.unusable += 1

    def advance(self, n: int) -> None:
        self.done += n
        if self.on_progress:
            self.on_progress(self.done, self.total)

    def flush(self, kind: str, force: bool = False) -> None:
        if (self.pending or self.bad) and (force or len(self.pending) + len(self.bad) >= self.chunk):
            self.stats.files.append(str(self.store.write(kind, dict(self.pending), dict(self.bad))))
            self.pending.clear()
            self.bad.clear()


def _encode_images(jobs, plan: CachePlan, data, vae, device, batch_size: int, w: _Writer) -> None:
    """VAE posteriors, grouped by crop size (buckets) so that a batch stacks."""
    from ..data import BadSample, pixel_tensor

    by_size: dict[tuple, list] = {}
    for job in jobs:
        by_size.setdefault(plan.rows[job[0]].target, []).append(job)
    for size_jobs in by_size.values():
        for s in range(0, len(size_jobs), batch_size):
            part = size_jobs[s: s + batch_size]
            pix, ok = [], []
            for i, key, flip in part:
                try:
                    image, _, original, crop_tl, _ = data.crop_image(data.row(i), i, 0)
                except BadSample as e:
                    w.unusable(key, f"row {i}: {e}")
                    continue
                t = pixel_tensor(image)
                pix.append(t.flip(-1) if flip else t)
                ok.append((key, torch.tensor([*original, *crop_tl], dtype=torch.int64)))
            if pix:
                px = torch.stack(pix).to(device=device, dtype=vae.dtype)
                moments = vae.encode(px).latent_dist.parameters.cpu()
                for (key, meta), m in zip(ok, moments):
                    w.add(key, {"moments": m.clone(), "meta": meta}, "images")
            w.advance(len(part))
            w.flush("images")
    w.flush("images", force=True)


def _encode_conditions(jobs, data, w: _Writer) -> None:
    """Condition maps as uint8, exactly the values the data loader makes."""
    from ..data import BadSample

    for i, key in jobs:
        try:
            row = data.row(i)
            image, img, _, crop_tl, resized = data.crop_image(row, i, 0)
            maps = data.condition_tensors(row, i, img, image, resized, crop_tl, np.random.default_rng(0))
            w.add(key, {str(c): (m * 255.0).round().to(torch.uint8) for c, m in enumerate(maps)}, "conditions")
        except BadSample as e:
            w.unusable(key, f"row {i}: {e}")
        w.advance(1)
        w.flush("conditions")
    w.flush("conditions", force=True)


def _encode_texts(jobs, base, device, batch_size: int, w: _Writer) -> None:
    """Text embeddings (and SDXL's pooled ones) of each distinct caption."""
    for s in range(0, len(jobs), batch_size):
        part = jobs[s: s + batch_size]
        ehs, pooled = text_embeddings(base, [c for c, _ in part], device)
        for j, (_, key) in enumerate(part):
            entry = {"embeds": ehs[j].cpu().clone()}
            if pooled is not None:
                entry["pooled"] = pooled[j].cpu().clone()
            w.add(key, entry, "texts")
        w.advance(len(part))
        w.flush("texts")
    w.flush("texts", force=True)


def prepare_cache(recipe, overrides: list[str] | dict | None = None, output: str | None = None,
                  shard: tuple[int, int] = (0, 1), batch_size: int = 8, device: str | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> CacheSummary:
    """`scedit prepare cache`: encode a recipe's data (a recipe path or dict) for its base model.
    The frozen dtype and the data settings are the recipe's, so `scedit train` finds the same keys."""
    from ..console import quiet_loaders
    from ..data import load_training_data
    from ..methods import build_method
    from ..models import load_base
    from ..recipes import Recipe, load_recipe

    quiet_loaders()  # the summary (and `on_progress`) report the build, as `scedit train` reports its run
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    method = build_method(r.method_name, r.method)
    why = check_cacheable(r.data, method.conditions)
    if why:
        raise SceditError(f"{r.path or 'recipe'}: {why}")
    dev = resolve_device(device)
    data = load_training_data(r.data, method.conditions, r.train.seed)
    folder = check_output_location(output or r.data.cache_dir or default_cache_dir(data), "cache folder")
    base = load_base(r.model.source, dtype=None, config=r.model.single_file_config or None)
    cast_encoders(base, resolve_frozen_dtype(r, dev))  # as training casts them: the same keys
    for m in [base.vae, *base.text_encoders]:
        m.to(dev).eval()
    plan = make_plan(data, base, folder)
    start = time.perf_counter()
    stats = build_cache(plan, data, base, dev, batch_size=batch_size, shard=shard, on_progress=on_progress)
    seconds = time.perf_counter() - start
    store = CacheStore(folder)
    return CacheSummary(stats, entries=len(plan.all_keys()), missing=len(plan.missing(store)), device=str(dev),
                        buckets=data.buckets.counts() if data.buckets is not None else None, seconds=round(seconds, 3),
                        images_per_second=round(stats.images / seconds, 2) if stats.images and seconds > 0 else None)
