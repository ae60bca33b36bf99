"""Cache of what is frozen: VAE latent distributions, text embeddings, condition maps.

With SCEdit the VAE, the text encoder(s) and the U-Net encoder are frozen; the
first two depend only on the data, so they are computed once (`scedit prepare
cache`, or `data.cache = "build"` in a recipe) and read back at every step.

Layout: a folder (default `scedit-cache/` next to the dataset) of safetensors
files, each holding whole entries. An entry is named by a content key:

    image entry  sha256(VAE fingerprint, image bytes' sha256, crop size, crop mode, flipped?)
                 -> moments (the posterior's mean and log-variance, as the VAE returns them;
                    std = exp(logvar / 2)), meta (original h, w, crop top, left)
    text entry   sha256(text-encoder fingerprint, caption) -> embeds (+ pooled for SDXL)
    cond entry   sha256(condition names, their files' sha256, image sha256, crop size, mode)
                 -> one uint8 map per condition (exactly the values the data loader makes)

A fingerprint hashes a model's class, config and every weight byte (and the
dtype it runs in, and the tokenizers' vocabularies): a changed image, caption,
resolution or base model changes the key, so a stale entry is never found, and
only the affected entries are encoded again. A build writes entries in chunks,
each chunk one file written atomically (`fsutil.atomic_path`); an interrupted
build keeps its finished files and the next one encodes only what is missing.
The posterior sample is still drawn at every visit from the sample's seeded
generator, so a cached run draws exactly what an uncached one does.
"""

from __future__ import annotations

import time

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import SceditError
from .fsutil import check_output_location

CACHE_VERSION = "1"
DEFAULT_DIRNAME = "scedit-cache"
MODES = ("off", "auto", "build")


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _config_dict(module) -> dict:
    cfg = getattr(module, "config", None)
    if cfg is None:
        return {}
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    # paths and library versions say where a model came from, not what it computes
    return {k: v for k, v in d.items() if not k.startswith("_") and k != "transformers_version"}


def module_fingerprint(modules, extra: dict | None = None) -> str:
    """sha256 over the modules' classes, configs and every weight byte (32 hex digits)."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, extra or {}], sort_keys=True, default=str).encode())
    for m in modules:
        h.update(type(m).__name__.encode())
        h.update(json.dumps(_config_dict(m), sort_keys=True, default=str).encode())
        for name, t in m.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:32]


def tokenizer_fingerprint(tok) -> str:
    vocab = sorted(tok.get_vocab().items())
    return _sha(type(tok).__name__, vocab, getattr(tok, "model_max_length", None),
                getattr(tok, "padding_side", None))


def vae_fingerprint(base) -> str:
    return module_fingerprint([base.vae], {"kind": "vae", "dtype": str(base.vae.dtype)})


def text_fingerprint(base) -> str:
    encs = base.text_encoders
    return module_fingerprint(encs, {"kind": "text", "sdxl": base.is_sdxl,
                                     "dtype": [str(next(e.parameters()).dtype) for e in encs],
                                     "tokenizers": [tokenizer_fingerprint(t) for t in base.tokenizers]})


def default_cache_dir(data) -> Path:
    base_dir = data.loaded.base_dir
    if base_dir is None:
        raise SceditError(f"{data.description}: a hub dataset has no folder to keep the cache beside; "
                          "set data.cache_dir (or --output) to a folder")
    return Path(base_dir) / DEFAULT_DIRNAME


# ---------------------------------------------------------------------------
# the store: a folder of safetensors files holding whole entries


class CacheStore:
    """Read side: which keys exist (from the files' headers), and their tensors (memory-mapped)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index: dict[str, str] = {}  # key -> file name
        self.bad: dict[str, str] = {}  # key -> why the sample cannot be used (unreadable image...)
        self._handles: dict[str, Any] = {}
        self._tensors: dict[str, list[str]] = {}  # key -> its tensor names in its file (no scan per read)
        self.rescan()

    def rescan(self) -> None:
        from safetensors import safe_open

        self.index.clear()
        self.bad.clear()
        self._tensors.clear()
        if not self.folder.is_dir():
            return
        for f in sorted(self.folder.glob("*.safetensors")):
            try:
                with safe_open(str(f), "pt") as h:
                    names = list(h.keys())
                    meta = h.metadata() or {}
            except Exception as e:  # a foreign or damaged file: say which, never read from it
                raise SceditError(f"{f}: not a readable cache file ({type(e).__name__}); delete it and run "
                                  "`scedit prepare cache` again") from None
            per_key: dict[str, list[str]] = {}
            for n in names:
                per_key.setdefault(n.split("/", 1)[0], []).append(n)
            for k, tensors in per_key.items():
                self.index[k] = f.name
                self._tensors[k] = tensors
            for k, v in meta.items():
                if k.startswith("bad:"):
                    self.bad[k[4:]] = v
                    self.index[k[4:]] = f.name
                    self._tensors[k[4:]] = per_key.get(k[4:], [])

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __getstate__(self):  # DataLoader workers open their own handles
        d = dict(self.__dict__)
        d["_handles"] = {}
        return d

    def get(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        name = self.index[key]
        h = self._handles.get(name)
        if h is None:
            h = self._handles[name] = safe_open(str(self.folder / name), "pt")
        cut = len(key) + 1
        return {n[cut:]: h.get_tensor(n) for n in self._tensors.get(key, ())}

    def write(self, kind: str, entries: dict[str, dict[str, torch.Tensor]], bad: dict[str, str]) -> Path:
        """One file with these whole entries, written atomically; named by its keys."""
        from safetensors.torch import save_file

        from .fsutil import atomic_path

        keys = sorted([*entries, *bad])
        path = self.folder / f"{kind}-{_sha(keys)[:20]}.safetensors"
        tensors = {f"{k}/{f}": t.contiguous() for k, fields_ in entries.items() for f, t in fields_.items()}
        if not tensors:  # safetensors needs one tensor; a file of only unusable samples keeps a marker
            tensors = {"__marker__/empty": torch.zeros(1)}
        meta = {"scedit_cache": CACHE_VERSION, **{f"bad:{k}": v[:300] for k, v in bad.items()}}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        for k in keys:
            self.index[k] = path.name
            self._tensors[k] = [f"{k}/{f}" for f in entries.get(k, {})]
        self.bad.update(bad)
        return path


# ---------------------------------------------------------------------------
# the plan: which entries a dataset needs for a base model


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
    from .data import BadSample

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
    if not cfg.center_crop:
        return ("data.center_crop = false draws a new random crop at every visit, which cannot be cached; "
                "set data.center_crop = true or data.cache = 'off'")
    if conditions and cfg.compute_conditions:
        return ("data.compute_conditions = true draws new condition settings at every visit, which cannot be "
                "cached; write the maps once with `scedit prepare --condition ...` or set data.cache = 'off'")
    return None


def make_plan(data, base, folder: Path) -> CachePlan:
    """Hash every image / condition file and caption of `data` (a TrainDataset) for `base`."""
    from .data import BadSample, condition_column

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
            plan.image_key = _sha("img", vfp, img_sha, geometry, False)
            if cfg.random_flip:
                plan.flip_key = _sha("img", vfp, img_sha, geometry, True)
            if data.conditions:
                files = []
                for cond in data.conditions:
                    col = condition_column(cfg, cond)
                    for c in ([col, f"{col}_mask"] if cond in ("inpaint", "outpaint") else [col]):
                        files.append(hashlib.sha256(_cell_bytes(row.get(c), base_dir)).hexdigest())
                plan.cond_key = _sha("cond", list(data.conditions), files, img_sha, geometry)
        except BadSample as e:
            plan = RowPlan(text=plan.text, reason=f"row {i}: {e}")
        rows.append(plan)
        for cap in data.captions_of(row):
            captions.setdefault(cap, _sha("txt", tfp, cap))
    return CachePlan(Path(folder), rows, captions, vfp, tfp, list(data.conditions))


# ---------------------------------------------------------------------------
# building


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


def build_cache(plan: CachePlan, data, base, device, *, batch_size: int = 8, chunk: int = 256,
                shard: tuple[int, int] = (0, 1), on_progress: Callable[[int, int], None] | None = None
                ) -> BuildStats:
    """Encode every entry of `plan` missing from its folder (this shard's part), `batch_size` at a time,
    writing a file every `chunk` entries. `on_progress(done, total)` after each batch."""
    from .data import BadSample, pixel_tensor
    from .training.validation import text_embeddings

    device = torch.device(device)
    store = CacheStore(plan.folder)
    si, sn = shard
    stats = BuildStats(str(plan.folder))
    mine = lambda key: int(key[:8], 16) % sn == si  # noqa: E731  (stable whatever the dataset order)
    img_jobs = [(i, k, flip) for i, r in enumerate(plan.rows) for k, flip in ((r.image_key, False), (r.flip_key, True))
                if k and mine(k)]
    cond_jobs = [(i, r.cond_key) for i, r in enumerate(plan.rows) if r.cond_key and mine(r.cond_key)]
    txt_jobs = [(c, k) for c, k in plan.captions.items() if mine(k)]
    stats.already = sum(1 for _, k, _ in img_jobs if k in store) + sum(1 for _, k in cond_jobs if k in store) \
        + sum(1 for _, k in txt_jobs if k in store)
    img_jobs = [j for j in img_jobs if j[1] not in store]
    cond_jobs = [j for j in cond_jobs if j[1] not in store]
    txt_jobs = [j for j in txt_jobs if j[1] not in store]
    total, done = len(img_jobs) + len(cond_jobs) + len(txt_jobs), 0
    if on_progress:
        on_progress(0, total)
    pending: dict[str, dict[str, torch.Tensor]] = {}
    bad: dict[str, str] = {}

    def flush(kind: str, force: bool = False):
        if pending or bad:
            if force or len(pending) + len(bad) >= chunk:
                stats.files.append(str(store.write(kind, dict(pending), dict(bad))))
                pending.clear()
                bad.clear()

    vae = base.vae
    with torch.no_grad():
        # images, grouped by crop size (buckets) so that a batch stacks
        by_size: dict[tuple, list] = {}
        for job in img_jobs:
            by_size.setdefault(plan.rows[job[0]].target, []).append(job)
        for size, jobs in by_size.items():
            for s in range(0, len(jobs), batch_size):
                part = jobs[s: s + batch_size]
                pix, ok = [], []
                for i, key, flip in part:
                    try:
                        image, _, original, crop_tl, _ = data.crop_image(data.row(i), i, 0)
                    except BadSample as e:
                        bad[key] = f"row {i}: {e}"
                        stats.unusable += 1
                        continue
                    t = pixel_tensor(image)
                    pix.append(t.flip(-1) if flip else t)
                    ok.append((key, torch.tensor([*original, *crop_tl], dtype=torch.int64)))
                if pix:
                    px = torch.stack(pix).to(device=device, dtype=vae.dtype)
                    moments = vae.encode(px).latent_dist.parameters.cpu()
                    for (key, meta), m in zip(ok, moments):
                        pending[key] = {"moments": m.clone(), "meta": meta}
                        stats.images += 1
                done += len(part)
                if on_progress:
                    on_progress(done, total)
                flush("images")
        flush("images", force=True)
        for i, key in cond_jobs:
            try:
                row = data.row(i)
                image, img, _, crop_tl, resized = data.crop_image(row, i, 0)
                maps = data.condition_tensors(row, i, img, image, resized, crop_tl, np.random.default_rng(0))
                pending[key] = {str(c): (m * 255.0).round().to(torch.uint8) for c, m in enumerate(maps)}
                stats.conditions += 1
            except BadSample as e:
                bad[key] = f"row {i}: {e}"
                stats.unusable += 1
            done += 1
            if on_progress:
                on_progress(done, total)
            flush("conditions")
        flush("conditions", force=True)
        for s in range(0, len(txt_jobs), batch_size):
            part = txt_jobs[s: s + batch_size]
            ehs, pooled = text_embeddings(base, [c for c, _ in part], device)
            for j, (_, key) in enumerate(part):
                entry = {"embeds": ehs[j].cpu().clone()}
                if pooled is not None:
                    entry["pooled"] = pooled[j].cpu().clone()
                pending[key] = entry
                stats.texts += 1
            done += len(part)
            if on_progress:
                on_progress(done, total)
            flush("texts")
        flush("texts", force=True)
    return stats


# ---------------------------------------------------------------------------
# reading while training


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
        from .data import BadSample

        position, index = key if isinstance(key, tuple) else (key, key)
        try:
            item = self.load(position, index)
        except BadSample as e:
            return {"skipped": str(e), "index": index, "position": position}
        item["position"] = position
        return item

    def load(self, position: int, index: int) -> dict:
        from .data import BadSample

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


def prepare_cache(recipe, overrides: list[str] | dict | None = None, output: str | None = None,
                  shard: tuple[int, int] = (0, 1), batch_size: int = 8, device: str | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> dict:
    """`scedit prepare cache`: encode a recipe's data (a recipe path or dict) for its base model.
    The frozen dtype and the data settings are the recipe's, so `scedit train` finds the same keys."""
    from .methods import build_method
    from .data import load_training_data
    from .models import load_base
    from .recipes import Recipe, load_recipe
    from .training.loop import _frozen_dtype, _cast_frozen

    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    method = build_method(r.method_name, r.method)
    why = check_cacheable(r.data, method.conditions)
    if why:
        raise SceditError(f"{r.path or 'recipe'}: {why}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_training_data(r.data, method.conditions, r.train.seed)
    folder = check_output_location(output or r.data.cache_dir or default_cache_dir(data), "cache folder")
    base = load_base(r.model.source, dtype=None, config=r.model.single_file_config or None)
    frozen = _frozen_dtype(r, dev)
    # the same casts as training (prepare_training), so fingerprints and encodings match
    _cast_frozen(base.text_encoders, frozen)
    _cast_frozen([base.vae], torch.float32 if (base.is_sdxl and frozen == torch.float16) else frozen)
    for m in [base.vae, *base.text_encoders]:
        m.to(dev).eval()
    plan = make_plan(data, base, folder)
    start = time.perf_counter()
    stats = build_cache(plan, data, base, dev, batch_size=batch_size, shard=shard, on_progress=on_progress)
    seconds = time.perf_counter() - start
    store = CacheStore(folder)
    out = stats.to_dict()
    # images/s: image entries (VAE encodes) this run per second of the whole encode, captions and maps included
    out.update(entries=len(plan.all_keys()), missing=len(plan.missing(store)), device=str(dev),
               buckets=data.buckets.counts() if data.buckets is not None else None, seconds=round(seconds, 3),
               images_per_second=round(stats.images / seconds, 2) if stats.images and seconds > 0 else None)
    return out
