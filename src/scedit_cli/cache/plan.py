"""Which cache entries a dataset needs for a base model: every image, condition file and caption hashed
into its entry's key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..conditions import MASKED_CONDITIONS
from ..errors import SceditError
from .store import CacheStore, content_key, text_fingerprint, vae_fingerprint

DEFAULT_DIRNAME = "scedit-cache"


def default_cache_dir(data) -> Path:
    base_dir = data.loaded.base_dir
    if base_dir is None:
        raise SceditError(f"{data.description}: a hub dataset has no folder to keep the cache beside; "
                          "set data.cache_dir (or --output) to a folder")
    return Path(base_dir) / DEFAULT_DIRNAME


@dataclass
class RowPlan:
    image_key: str | None = None
    flip_key: str | None = None
    cond_key: str | None = None
    target: tuple[int, int] = (0, 0)
    text: Any = None  # the row's caption cell (a string or a list of alternatives)
    reason: str | None = None  # the row cannot be used (unreadable file): skipped as without a cache


@dataclass
class CachePlan:
    folder: Path
    rows: list[RowPlan]
    captions: dict[str, str]  # caption (prefix applied) -> text key
    vae_fp: str
    text_fp: str
    conditions: list[str] = field(default_factory=list)

    def image_keys(self) -> list[str]:
        return [k for r in self.rows for k in (r.image_key, r.flip_key) if k]

    def cond_keys(self) -> list[str]:
        return [r.cond_key for r in self.rows if r.cond_key]

    def text_keys(self) -> list[str]:
        return list(dict.fromkeys(self.captions.values()))

    def all_keys(self) -> list[str]:
        return [*self.image_keys(), *self.cond_keys(), *self.text_keys()]

    def missing(self, store: CacheStore) -> list[str]:
        return [k for k in self.all_keys() if k not in store]


def _cell_bytes(value, base_dir: Path | None) -> bytes:
    """The raw bytes of an image cell (path, bytes, or datasets' {'bytes', 'path'}); raises BadSample."""
    from ..data import BadSample

    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        p = Path(value).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_file():
            raise BadSample(f"{p}: file not found")
        return p.read_bytes()
    raise BadSample("no image in this row" if value is None else f"unsupported image cell of type {type(value).__name__}")


def check_cacheable(cfg, conditions: list[str]) -> str | None:
    """Why this data setup cannot be cached (None: it can)."""
    if getattr(cfg, "streaming", False):
        return "streaming: a cache needs every row up front; set data.streaming = false to build or use one"
    if not cfg.center_crop:
        return ("data.center_crop = false draws a new random crop at every visit, which cannot be cached; "
                "set data.center_crop = true or data.cache = 'off'")
    if conditions and cfg.compute_conditions:
        return ("data.compute_conditions = true draws new condition settings at every visit, which cannot be "
                "cached; write the maps once with `scedit prepare --condition ...` or set data.cache = 'off'")
    return None


def make_plan(data, base, folder: Path) -> CachePlan:
    """Hash every image / condition file and caption of `data` (a TrainDataset) for `base`."""
    from ..data import BadSample, condition_column

    cfg = data.cfg
    vfp, tfp = vae_fingerprint(base), text_fingerprint(base)
    rows, captions = [], {}
    base_dir = data.loaded.base_dir
    for i in range(len(data)):
        row = data.row(i)
        plan = RowPlan(text=row.get(cfg.text_column))
        try:
            img_sha = hashlib.sha256(_cell_bytes(row.get(cfg.image_column), base_dir)).hexdigest()
            plan.target = tuple(data.target_size(i))
            geometry = [plan.target, cfg.center_crop]
            plan.image_key = content_key("img", vfp, img_sha, geometry, False)
            if cfg.random_flip:
                plan.flip_key = content_key("img", vfp, img_sha, geometry, True)
            if data.conditions:
                files = []
                for cond in data.conditions:
                    col = condition_column(cfg, cond)
                    for c in ([col, f"{col}_mask"] if cond in MASKED_CONDITIONS else [col]):
                        files.append(hashlib.sha256(_cell_bytes(row.get(c), base_dir)).hexdigest())
                plan.cond_key = content_key("cond", list(data.conditions), files, img_sha, geometry)
        except BadSample as e:
            plan = RowPlan(text=plan.text, reason=f"row {i}: {e}")
        rows.append(plan)
        for cap in data.captions_of(row):
            captions.setdefault(cap, content_key("txt", tfp, cap))
    return CachePlan(Path(folder), rows, captions, vfp, tfp, list(data.conditions))
