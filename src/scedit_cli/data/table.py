"""Training data as a table (random access by row): column checks, transforms, caption dropout, condition maps.

The sources themselves are read by `datasource.py`. Image cells may be paths
(relative to the dataset's folder), `datasets.Image` values, or raw bytes.
Nothing here writes to the input.

Every random choice (crop, flip, caption dropout, random condition settings)
comes from a generator seeded by (seed, stream position), so a sample depends
only on where it falls in the training stream: whatever the worker count,
process count or resume point. An unreadable image is skipped and counted,
never a crash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..conditions import CONDITIONS, MASKED_CONDITIONS, condition_channels, resize_filter
from ..conditions.tensor import condition_tensor, image_tensor
from ..cells import BadSample, open_image
from ..datasource import LoadedDataset, load_source
from ..errors import SceditError
from ..images import resize_crop
from ..recipe_parse import suggest

VALIDATION_OFFSET = 1 << 40  # stream positions for validation samples, apart from training ones


def condition_column(cfg, name: str) -> str:
    return cfg.condition_columns.get(name, name)


def check_columns(cfg, conditions: list[str], cols: list[str], where: str) -> None:
    """One-line errors for a missing image, text or condition column (or an unknown condition)."""

    def need(col: str, key: str):
        if col not in cols:
            raise SceditError(
                f"{where}: no column {col!r} (columns: {', '.join(cols)}); set {key} to the right column"
            )

    need(cfg.image_column, "data.image_column")
    need(cfg.text_column, "data.text_column")
    for cond in conditions:
        col = condition_column(cfg, cond)
        if cfg.compute_conditions:
            continue
        if col not in cols:
            typo = "" if cond in CONDITIONS else suggest(cond, CONDITIONS)  # `cany` for `canny`
            raise SceditError(
                f"{where}: no column {col!r} for condition {cond!r} (columns: {', '.join(cols)}); {typo}"
                f"make the maps with `scedit prepare`, set data.condition_columns.{cond} to the right column, "
                "or set data.compute_conditions = true to compute them on the fly"
            )
        if cond in MASKED_CONDITIONS and f"{col}_mask" not in cols:
            raise SceditError(
                f"{where}: condition {cond!r} needs the cut-out column {col!r} and the mask column {col + '_mask'!r} "
                f"(columns: {', '.join(cols)}); make them with `scedit prepare` or set data.compute_conditions = true"
            )
    if cfg.compute_conditions and conditions:
        from ..conditions import get_spec

        for cond in conditions:
            get_spec(cond)  # unknown condition -> one-line error naming the known ones


def undecoded_images(ds):
    """`ds` with its image columns left as bytes/paths: we decode them ourselves, so that a corrupt
    one is skipped rather than fatal."""
    import datasets

    for col, feat in (ds.features or {}).items():
        if isinstance(feat, datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


def load_table_data(cfg, conditions: list[str], seed: int = 0) -> "TrainDataset":
    """Load `cfg.source` (a `DataSection`, not streamed) and check its columns for `conditions`."""
    index_dir = Path(cfg.cache_dir) / "shard-index" if cfg.cache_dir else None
    loaded = load_source(cfg.source, cfg.split, index_dir)
    ds = loaded.dataset
    check_columns(cfg, conditions, list(ds.column_names), loaded.description)
    ds = undecoded_images(ds)
    where = loaded.description
    if cfg.max_samples and len(ds) > cfg.max_samples:
        ds = ds.select(range(cfg.max_samples))
    if len(ds) == 0:
        raise SceditError(f"{where}: the dataset is empty")
    data = TrainDataset(LoadedDataset(ds, loaded.base_dir, where, loaded.reader), cfg, conditions, seed)
    # Skipping unreadable rows is right for a few; with none left, training would step on nothing.
    skipped: list[str] = []
    if not data.validation_items(1, skipped):
        raise SceditError(
            f"{where}: none of its {len(ds)} row(s) can be used ({len(skipped)} skipped: "
            f"{'; '.join(skipped[:3])}); fix the paths (relative to the dataset's folder), "
            "data.image_column or data.text_column"
        )
    if cfg.buckets:
        from ..buckets import assign_buckets

        data.buckets = assign_buckets(data, cfg.bucket_step, cfg.bucket_max_ratio)
    return data


def pixel_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB crop as the VAE's input: (3, H, W) in [-1, 1]."""
    return image_tensor(img)[:3] * 2.0 - 1.0


class TrainDataset(torch.utils.data.Dataset):
    """Map-style dataset whose keys are (stream position, row index)."""

    def __init__(self, loaded: LoadedDataset, cfg, conditions: list[str], seed: int):
        self.loaded = loaded
        self.ds = loaded.dataset
        self.cfg = cfg
        self.conditions = list(conditions)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def description(self) -> str:
        return self.loaded.description

    def __getitem__(self, key):
        position, index = key if isinstance(key, tuple) else (key, key)
        return self.train_item(position, index)

    def train_item(self, position: int, index: int, row: dict | None = None) -> dict:
        """The item `collate` takes at stream `position`: a sample, or why it was skipped."""
        try:
            item = self.load(position, index) if row is None else self.load_row(row, position, index)
        except BadSample as e:
            return {"skipped": str(e), "index": index, "position": position}
        item["position"] = position
        return item

    def target_size(self, index: int) -> tuple[int, int]:
        """(height, width) of the training crop of row `index`: the recipe's square, or its bucket."""
        if self.buckets is not None:
            return self.buckets.size_of(int(index))
        return (self.cfg.resolution, self.cfg.resolution)

    buckets = None  # a `buckets.BucketAssignment` when data.buckets is on

    @property
    def shard_of(self) -> list[int] | None:
        """The shard of each row for webdataset sources (`shards.py`), else None."""
        return self.ds["__shard__"] if "__shard__" in self.ds.column_names else None

    def row(self, index: int) -> dict:
        return self.loaded.row(index)

    def draw_caption(self, row: dict, index: int, rng: np.random.Generator, train: bool) -> str:
        """The caption of one visit (one of several alternatives, prefix, dropout): the first draws of `rng`."""
        cfg = self.cfg
        text = row.get(cfg.text_column)
        if text is None:
            raise BadSample(f"row {index}: no text in column {cfg.text_column!r}")
        if isinstance(text, list):  # several captions per image (e.g. COCO): one per visit
            if not text:
                raise BadSample(f"row {index}: empty caption list")
            text = text[int(rng.integers(0, len(text)))] if train else text[0]
        caption = self.with_prefix(str(text))
        if train and cfg.caption_dropout and rng.random() < cfg.caption_dropout:
            caption = ""
        return caption

    def with_prefix(self, text: str) -> str:
        return f"{self.cfg.caption_prefix} {text}".strip() if self.cfg.caption_prefix else text

    def captions_of(self, row: dict) -> list[str]:
        """Every caption a visit of `row` can draw (all alternatives, and "" with caption dropout)."""
        text = row.get(self.cfg.text_column)
        alts = text if isinstance(text, list) else ([] if text is None else [text])
        out = [self.with_prefix(str(t)) for t in alts]
        if self.cfg.caption_dropout:
            out.append("")
        return out

    def first_captions(self, limit: int = 1000) -> list[str]:
        """The captions of the first `limit` rows (a read of the text column only; no image is opened)."""
        head = self.ds.select_columns([self.cfg.text_column]).select(range(min(limit, len(self.ds))))
        return [c for row in head for c in self.captions_of(row)]

    def crop_image(self, row: dict, index: int, position: int, size=None) -> tuple:
        """(PIL crop, the full RGB image, original (h, w), crop (top, left), resized (w, h)) of row `index`."""
        img, _ = open_image(row.get(self.cfg.image_column), self.loaded.base_dir, "RGB")
        original_size = (img.height, img.width)
        crop_rng = np.random.default_rng([self.seed, int(position), 1])
        image, crop_tl, resized = resize_crop(img, size or self.target_size(index), self.cfg.center_crop, crop_rng,
                                               Image.BICUBIC)
        return image, img, original_size, crop_tl, resized

    def load(self, position: int, index: int, train: bool = True, size=None) -> dict:
        return self.load_row(self.row(index), position, index, train, size)

    def load_row(self, row: dict, position: int, index: int, train: bool = True, size=None) -> dict:
        """One training item from `row` at stream `position` (`index`: its name in messages)."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, int(position)])
        caption = self.draw_caption(row, index, rng, train)
        image, img, original_size, crop_tl, resized = self.crop_image(row, index, position, size)
        conds = self.condition_tensors(row, index, img, image, resized, crop_tl, rng)  # may draw from rng
        flip = train and cfg.random_flip and rng.random() < 0.5
        if flip:
            conds = [t.flip(-1) for t in conds]
        pixels = pixel_tensor(image)
        if flip:
            pixels = pixels.flip(-1)
        return {"pixel_values": pixels, "caption": caption, "conditions": conds, "original_size": original_size,
                "crop_top_left": crop_tl, "index": index, "target_size": tuple(image.size[::-1])}

    def condition_tensors(self, row, index, img, image, resized, crop_tl, rng) -> list[torch.Tensor]:
        conds = []
        for cond in self.conditions:
            maps = self._condition_maps(cond, row, index, img, image, resized, crop_tl, rng)
            t = condition_tensor(maps)[: condition_channels(cond)]
            if t.shape[0] != condition_channels(cond):
                raise BadSample(f"row {index}: condition {cond!r} has {t.shape[0]} channels, expected {condition_channels(cond)}")
            conds.append(t)
        return conds

    def _condition_maps(self, cond, row, index, full_img, image, resized, crop_tl, rng) -> list[Image.Image]:
        cfg = self.cfg
        col = condition_column(cfg, cond)
        masked = cond in MASKED_CONDITIONS
        if cfg.compute_conditions:
            from ..conditions import compute_condition_maps, get_spec

            try:
                maps = compute_condition_maps(cond, image, rng=rng, weights=cfg.detector_weights or None)
            except SceditError:
                raise
            except Exception as e:
                raise BadSample(f"row {index}: computing {cond!r} failed ({type(e).__name__}: {str(e)[:80]})") from None
            return [maps[k].convert("L" if k.endswith("_mask") else "RGB") for k in get_spec(cond).columns]
        cols = [col, f"{col}_mask"] if masked else [col]
        out = []
        for c in cols:
            is_mask = c.endswith("_mask")
            m, _ = open_image(row.get(c), self.loaded.base_dir, "L" if is_mask else "RGB")
            if m.size != full_img.size:
                m = m.resize(full_img.size, resize_filter(cond, is_mask))
            m = m.resize(resized, resize_filter(cond, is_mask))
            top, left = crop_tl
            out.append(m.crop((left, top, left + image.width, top + image.height)))
        return out

    def validation_items(self, count: int, skipped: list[str] | None = None) -> list[dict]:
        """The first `count` readable rows, without flip or caption dropout (for sample grids);
        why each row before them could not be read is appended to `skipped`."""
        items = []
        for i in range(len(self)):
            if len(items) >= count:
                break
            try:
                items.append(TrainDataset.load(self, VALIDATION_OFFSET + i, i, train=False,
                                               size=(self.cfg.resolution, self.cfg.resolution)))
            except BadSample as e:
                if skipped is not None:
                    skipped.append(str(e))
        return items


def collate(items: list[dict]) -> dict:
    good = [it for it in items if "skipped" not in it]
    batch = {
        "skipped": [it["skipped"] for it in items if "skipped" in it],
        "size": len(good),
    }
    if not good:
        return batch
    sizes = {tuple(it["target_size"]) if "target_size" in it else tuple(it["pixel_values"].shape[-2:]) for it in good}
    if len(sizes) > 1:
        raise SceditError(f"one batch mixes training sizes {sorted(sizes)}; this is a bug in the bucket sampler")
    batch["target_size"] = sizes.pop()
    if "moments" in good[0]:  # from the cache (see cache.py): latent distributions and text embeddings
        batch["moments"] = torch.stack([it["moments"] for it in good])
        batch["prompt_embeds"] = torch.stack([it["prompt_embeds"] for it in good])
        if good[0].get("pooled") is not None:
            batch["pooled"] = torch.stack([it["pooled"] for it in good])
    else:
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in good])
    batch["captions"] = [it["caption"] for it in good]
    batch["positions"] = [it.get("position", it["index"]) for it in good]
    n_cond = len(good[0]["conditions"])
    batch["conditions"] = [torch.stack([it["conditions"][k] for it in good]) for k in range(n_cond)]
    batch["original_sizes"] = [it["original_size"] for it in good]
    batch["crop_top_lefts"] = [it["crop_top_left"] for it in good]
    return batch
