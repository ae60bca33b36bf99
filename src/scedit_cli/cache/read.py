"""Reading the cache while training: a dataset whose items come from cached entries, and the one
decision (`data.cache` off | auto | build) of whether a run uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import SceditError
from .build import build_cache
from .plan import CachePlan, check_cacheable, default_cache_dir, make_plan
from .store import CacheStore

MODES = ("off", "auto", "build")  # data.cache


class CachedTrainDataset(torch.utils.data.Dataset):
    """A `TrainDataset` whose training items come from the cache: the same per-position draws
    (caption alternative, dropout, flip) select cached entries instead of encoding pixels."""

    def __init__(self, data, plan: CachePlan, store: CacheStore):
        self.data, self.plan, self.store = data, plan, store
        self.cfg, self.seed, self.conditions = data.cfg, data.seed, data.conditions

    def __len__(self) -> int:
        return len(self.data)

    @property
    def description(self) -> str:
        return self.data.description

    @property
    def buckets(self):
        return self.data.buckets

    @property
    def shard_of(self):
        return self.data.shard_of

    def validation_items(self, count: int) -> list[dict]:
        return self.data.validation_items(count)

    def __getitem__(self, key):
        from ..data import BadSample

        position, index = key if isinstance(key, tuple) else (key, key)
        try:
            item = self.load(position, index)
        except BadSample as e:
            return {"skipped": str(e), "index": index, "position": position}
        item["position"] = position
        return item

    def load(self, position: int, index: int) -> dict:
        from ..data import BadSample

        rp = self.plan.rows[int(index)]
        rng = np.random.default_rng([self.seed, int(position)])
        caption = self.data.draw_caption({self.cfg.text_column: rp.text}, index, rng, True)
        if rp.reason:
            raise BadSample(rp.reason)
        # no condition draws in between: check_cacheable refuses computed (random) conditions
        flip = self.cfg.random_flip and rng.random() < 0.5
        key = rp.flip_key if flip else rp.image_key
        for k in (key, rp.cond_key):
            if k in self.store.bad:
                raise BadSample(self.store.bad[k])
        img = self.store.get(key)
        txt = self.store.get(self.plan.captions[caption])
        conds = []
        if rp.cond_key:
            maps = self.store.get(rp.cond_key)
            for c in range(len(maps)):
                t = maps[str(c)].to(torch.float32) / 255.0
                conds.append(t.flip(-1) if flip else t)
        meta = img["meta"].tolist()
        return {"moments": img["moments"], "prompt_embeds": txt["embeds"], "pooled": txt.get("pooled"),
                "caption": caption, "conditions": conds, "original_size": (meta[0], meta[1]),
                "crop_top_left": (meta[2], meta[3]), "index": index, "target_size": rp.target}


def attach_cache(mode: str, folder: str, data, base, device, *, build_here: bool = True,
                 barrier: Callable[[], None] = lambda: None, batch_size: int = 8):
    """(dataset to train on, one line saying what is cached). mode: off | auto | build."""
    if mode == "off":
        return data, None
    why = check_cacheable(data.cfg, data.conditions)
    if why:
        if mode == "build":
            raise SceditError(f"data.cache = 'build': {why}")
        return data, f"cache: not used ({why})"
    if not folder and mode == "auto" and data.loaded.base_dir is None:
        return data, "cache: not used (this source has no local folder; set data.cache_dir to use one)"
    folder = Path(folder) if folder else default_cache_dir(data)
    if mode == "auto" and not folder.is_dir():
        return data, (f"cache: none at {folder}; VAE and text encoder run at every step "
                      "(`scedit prepare cache` or data.cache = 'build' makes one)")
    plan = make_plan(data, base, folder)
    store = CacheStore(folder)
    missing = plan.missing(store)
    if missing and mode == "auto":
        return data, (f"cache: {folder} lacks {len(missing)} of {len(plan.all_keys())} entries for this data and base "
                      "model (changed files or captions, or another model): not used; complete it with "
                      "`scedit prepare cache` or data.cache = 'build'")
    built = None
    if missing:
        if build_here:
            built = build_cache(plan, data, base, device, batch_size=batch_size)
        barrier()
        store.rescan()
        still = plan.missing(store)
        if still:
            raise SceditError(f"{folder}: {len(still)} cache entries still missing after the build; "
                              "delete the folder and run again")
    n = len(plan.all_keys())
    what = "latents, text embeddings" + (", condition maps" if plan.conditions else "")
    note = f"cache: using {folder} ({what}; {n} entries"
    if built is not None:
        note += f", {built.images + built.texts + built.conditions} encoded now"
    return CachedTrainDataset(data, plan, store), note + ")"
