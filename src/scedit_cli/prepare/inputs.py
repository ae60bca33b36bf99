"""Dataset readers for `scedit prepare`: every input becomes a stream of `Record`s.

Supported inputs: webdataset tar shards (img2dataset's output; see `shards.py` for the
ways to name them), a folder of images (captions from sidecar `.txt` files), a
folder with `metadata.jsonl` (HF imagefolder layout), a parquet file or folder
of parquet files, a folder written by `datasets.save_to_disk`, or a `datasets`
name (read from the local HF cache; nothing is downloaded). Readers only read:
the input is never modified.

Each record has a stable `key` (a safe file stem) and `index` (position in the
input's own order), so shards, workers and resumed runs agree on what is what.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import SceditError
from ..fsutil import read_jsonl

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
IMAGE_COLUMNS = ("image", "file_name", "image_path", "path", "jpg", "png")
TEXT_COLUMNS = ("text", "caption", "TEXT", "prompt")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Record:
    index: int
    key: str
    text: str
    source: str  # human-readable origin for messages: a path, or "file.parquet row 12"
    path: Path | None = None  # image file to read, or
    data: bytes | None = None  # encoded image bytes
    extra: dict[str, Any] = field(default_factory=dict)  # other scalar columns, passed through


@dataclass
class InputSource:
    kind: str
    location: str
    count: int  # number of records
    _iter: Any = None
    ignored: int = 0  # files in an image folder that are not images

    def records(self) -> Iterator[Record]:
        return self._iter()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "records": self.count}


def safe_key(raw: str) -> str:
    """A relative path (without extension) or id as a filesystem-safe stem: a record's key before
    de-duplication. Keys seed a record's random settings (`conditions.record_rng`)."""
    return (_UNSAFE.sub("_", raw.replace("/", "__").replace("\\", "__")).strip("._") or "item")[:150]


class _KeyMaker:
    """Turns a relative path or id into a unique, filesystem-safe stem, deterministically."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, raw: str, index: int) -> str:
        stem = safe_key(raw)
        key = stem
        if key in self.seen:
            key = f"{stem}-{index:09d}"
        self.seen.add(key)
        return key


def _scalar_extra(row: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in skip and (v is None or isinstance(v, (str, int, float, bool)))}


def pick_column(columns, wanted: str | None, candidates: tuple[str, ...], what: str, where: str, required: bool = True) -> str | None:
    """The column `wanted` (refused when absent), else the first of `candidates` present; `what` names the
    `--{what}-column` option that picks it. None when nothing fits and the column is optional."""
    if wanted:
        if wanted not in columns:
            raise SceditError(f"{where} has no column '{wanted}' (columns: {', '.join(map(str, columns))}); fix --{what}-column")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    if required:
        raise SceditError(
            f"{where} has no {what} column (looked for {', '.join(candidates)}; columns: {', '.join(map(str, columns))}); pass --{what}-column"
        )
    return None


def _image_folder(root: Path) -> InputSource:
    files, ignored = [], 0
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        elif p.suffix.lower() != ".txt":
            ignored += 1
    if not files:
        raise SceditError(f"input folder {root} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}); point --input at a folder of images")

    def it() -> Iterator[Record]:
        keys = _KeyMaker()
        for i, p in enumerate(files):
            rel = p.relative_to(root).as_posix()
            side = p.with_suffix(".txt")
            text = side.read_text(encoding="utf-8", errors="replace").strip() if side.is_file() else ""
            yield Record(i, keys(rel.rsplit(".", 1)[0], i), text, str(p), path=p)

    return InputSource("folder", str(root), len(files), it, ignored)


def _jsonl(meta: Path, image_column: str | None, text_column: str | None) -> InputSource:
    rows = []
    for n, row in read_jsonl(meta, "fix or remove that line"):
        if not isinstance(row, dict):
            raise SceditError(f"{meta} line {n} is not a JSON object; each line must be {{\"file_name\": ..., \"text\": ...}}")
        rows.append(row)
    if not rows:
        raise SceditError(f"{meta} has no rows; add one JSON object per image")
    columns = list(dict.fromkeys(k for r in rows[:100] for k in r))
    icol = pick_column(columns, image_column, IMAGE_COLUMNS, "image", str(meta))
    tcol = pick_column(columns, text_column, TEXT_COLUMNS, "text", str(meta), required=False)
    root = meta.parent

    def it() -> Iterator[Record]:
        keys = _KeyMaker()
        for i, row in enumerate(rows):
            rel = row.get(icol)
            if not isinstance(rel, str) or not rel:
                raise SceditError(f"{meta} row {i + 1} has no '{icol}' path; every row needs one")
            text = row.get(tcol, "") if tcol else ""
            yield Record(
                i, keys(rel.rsplit(".", 1)[0], i), "" if text is None else str(text), str(root / rel),
                path=root / rel, extra=_scalar_extra(row, {icol, tcol, "image", "text"}),
            )

    return InputSource("jsonl", str(meta), len(rows), it)


def _image_value(value: Any, base: Path, where: str) -> tuple[Path | None, bytes | None, str | None]:
    """An image cell: HF-style {"bytes", "path"} struct, raw bytes, or a path string."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return None, value["bytes"], value.get("path")
        if value.get("path"):
            return base / value["path"], None, value["path"]
    elif isinstance(value, (bytes, bytearray)):
        return None, bytes(value), None
    elif isinstance(value, str) and value:
        return base / value, None, value
    raise SceditError(f"{where} has no image (empty or unsupported image cell)")


def _parquet(target: Path, image_column: str | None, text_column: str | None) -> InputSource:
    import pyarrow.parquet as pq

    files = sorted(target.glob("*.parquet")) if target.is_dir() else [target]
    try:
        metas = [pq.ParquetFile(f) for f in files]
    except Exception as e:  # pyarrow raises several types for a bad file
        raise SceditError(f"cannot read parquet {target}: {e}") from None
    columns = metas[0].schema_arrow.names
    icol = pick_column(columns, image_column, IMAGE_COLUMNS, "image", str(files[0]))
    tcol = pick_column(columns, text_column, TEXT_COLUMNS, "text", str(files[0]), required=False)
    count = sum(m.metadata.num_rows for m in metas)

    def it() -> Iterator[Record]:
        keys = _KeyMaker()
        i = 0
        for f, m in zip(files, metas):
            row_in_file = 0
            for batch in m.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    where = f"{f.name} row {row_in_file}"
                    path, data, name = _image_value(row.get(icol), f.parent, where)
                    raw = str(row["key"]) if row.get("key") is not None else (
                        f"{f.stem}-{row_in_file:09d}" if len(files) > 1 else f"{row_in_file:09d}")
                    text = row.get(tcol) if tcol else ""
                    yield Record(i, keys(raw, i), "" if text is None else str(text), where, path=path, data=data,
                                 extra=_scalar_extra(row, {icol, tcol, "image", "text"}))
                    i += 1
                    row_in_file += 1

    return InputSource("parquet", str(target), count, it)


def _hf_dataset(ds: Any, location: str, kind: str, image_column: str | None, text_column: str | None) -> InputSource:
    import datasets

    columns = list(ds.column_names)
    icol = pick_column(columns, image_column, IMAGE_COLUMNS, "image", location)
    tcol = pick_column(columns, text_column, TEXT_COLUMNS, "text", location, required=False)
    if isinstance(ds.features.get(icol), datasets.Image):
        # Keep the encoded bytes: no decode/re-encode round trip in the main process.
        ds = ds.cast_column(icol, datasets.Image(decode=False))

    def it() -> Iterator[Record]:
        keys = _KeyMaker()
        for i, row in enumerate(ds):
            where = f"{location} row {i}"
            path, data, _ = _image_value(row.get(icol), Path("."), where)
            raw = str(row["key"]) if row.get("key") is not None else f"{i:09d}"
            text = row.get(tcol) if tcol else ""
            yield Record(i, keys(raw, i), "" if text is None else str(text), where, path=path, data=data,
                         extra=_scalar_extra(row, {icol, tcol, "image", "text"}))

    return InputSource(kind, location, len(ds), it)


def _webdataset(urls: list[str], spec: str) -> InputSource:
    """webdataset tar shards (`shards.py`'s layout): records in shard order, images read by offset."""
    from ..shards import IMAGE_SUFFIXES, ShardReader, index_shard

    samples = [(k, s) for k, url in enumerate(urls) for s in index_shard(url)]
    reader = ShardReader(urls)

    def it() -> Iterator[Record]:
        keys = _KeyMaker()
        for i, (k, s) in enumerate(samples):
            member = next((s["members"][x] for x in IMAGE_SUFFIXES if x in s["members"]), None)
            where = f"{urls[k]}:{member[2] if member else s['key']}"
            data = reader.read({"shard": k, "offset": member[0], "size": member[1], "name": member[2]})["bytes"] \
                if member else b""  # no image member: unreadable, so skipped and counted like a corrupt file
            yield Record(i, keys(s["key"], i), s["text"] or "", where, data=data)

    return InputSource("webdataset", spec, len(samples), it)


def open_input(spec: str, *, split: str = "train", image_column: str | None = None, text_column: str | None = None) -> InputSource:
    """Open `spec` (path or `datasets` name) as an `InputSource`; clear SceditError if unusable."""
    from ..shards import shard_urls

    urls = shard_urls(spec)
    if urls is not None:
        return _webdataset(urls, spec)
    target = Path(spec).expanduser()
    if target.exists():
        target = target.resolve()  # settings.json records it: same input however it is spelled
    if target.is_file():
        if target.suffix == ".parquet":
            return _parquet(target, image_column, text_column)
        if target.suffix == ".jsonl":
            return _jsonl(target, image_column, text_column)
        raise SceditError(f"input {target} is a file but not .parquet or .jsonl; pass a folder of images, a metadata.jsonl, a parquet, or a datasets name")
    if target.is_dir():
        if (target / "metadata.jsonl").is_file():
            return _jsonl(target / "metadata.jsonl", image_column, text_column)
        if (target / "dataset_info.json").is_file() and (target / "state.json").is_file():
            import datasets

            return _hf_dataset(datasets.load_from_disk(str(target)), str(target), "datasets-disk", image_column, text_column)
        if any(target.glob("*.parquet")) and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in target.iterdir()):
            return _parquet(target, image_column, text_column)
        return _image_folder(target)
    if spec.startswith((".", "/", "~")) or Path(spec).suffix in (".parquet", ".jsonl"):
        raise SceditError(f"input {spec} does not exist; check the path")
    import datasets

    try:
        ds = datasets.load_dataset(spec, split=split)
    except Exception as e:  # offline/unknown names raise several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SceditError(
            f"input '{spec}' is not a file or folder, and the datasets library cannot load it from the local cache ({first}); "
            f"download it once on a connected machine (datasets.load_dataset('{spec}')) or pass a local path"
        ) from None
    return _hf_dataset(ds, spec, "datasets", image_column, text_column)
