"""Webdataset tar shards (img2dataset's layout) as a table of rows read by offset.

A sample is the tar members sharing a key (the member name up to the first dot
of its base name): `KEY.jpg` (or .jpeg/.png/.webp) is the image, `KEY.txt` the
caption, else the `caption` / `text` field of `KEY.json`; `KEY.<column>.png`
is the condition map of that column (the names `scedit prepare conditions`
gives its columns, e.g. `KEY.canny.png`, `KEY.<col>_mask.png`).

Each shard is indexed once (member headers: name, offset, size; captions are
read then, they are small) and the index kept in a cache folder keyed by the
shard's URL, size and modification time, never beside the data. The rows are a
`datasets.Dataset` whose image and condition cells are references
{"shard", "offset", "size", "name"}; `ShardReader.resolve` turns them into
bytes when a row is loaded. So samplers, buckets, workers and resume treat
shards like any other table and every sample is seen once per epoch.
Shards may be local paths or any fsspec URL (`file://`, `s3://`, `https://`...).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .cells import BadSample
from .errors import SceditError
from .fsutil import write_json_atomic

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
INDEX_VERSION = 1
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """webdataset's `shard-{000..009}.tar` notation, zero padding kept."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
    return [x for i in range(lo, hi + 1)
            for x in expand_braces(pattern[: m.start()] + str(i).zfill(width) + pattern[m.end():])]


def _is_url(s: str) -> bool:
    return "://" in s


def shard_urls(source: str) -> list[str] | None:
    """The shards `source` names, or None when it does not name tar shards: a `.tar` file or URL,
    a comma-separated list, `{000..009}` ranges, a glob, or a folder holding `*.tar` and no table."""
    parts = [p.strip() for p in source.split(",") if p.strip()]
    names = [x for p in parts for x in expand_braces(p)]
    if not names or not all(n.endswith(".tar") or _is_url(n) or Path(n).expanduser().is_dir()
                            or any(c in n for c in "*?[") for n in names):
        return None
    out: list[str] = []
    for name in names:
        found = _url_shards(name) if _is_url(name) else _local_shards(name)
        if found is None:
            return None
        out += found
    return out


def resolve_shard_source(value: str, base_dir: Path) -> str | None:
    """`value` with each relative `.tar` name, range or glob made relative to `base_dir` (a recipe's
    folder); None when `value` is not a list of `.tar` names (then it is resolved as any source)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.endswith(".tar") for p in parts):
        return None
    return ",".join(p if _is_url(p) or Path(p).expanduser().is_absolute() else str(base_dir.resolve() / p)
                    for p in parts)


def _local_shards(name: str) -> list[str] | None:
    p = Path(name).expanduser()
    if p.is_dir():
        if any(p.glob("metadata.jsonl")) or any(p.glob("*.parquet")) or any(p.glob("*.jsonl")):
            return None
        found = sorted(p.glob("*.tar"))
        return [str(f) for f in found] or None
    if any(c in name for c in "*?["):
        found = sorted(glob.glob(str(p)))
        if not found:
            raise SceditError(f"data.source {name}: no file matches this pattern; check the shard names")
        return [str(f) for f in found]
    if not p.is_file():
        raise SceditError(f"data.source {name}: shard not found; check the path (relative paths start at the "
                          "recipe's folder)")
    return [str(p)]


def _url_shards(url: str) -> list[str] | None:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        if any(c in path for c in "*?["):
            found = sorted(fs.glob(path))
        elif fs.isdir(path):
            found = sorted(f for f in fs.glob(path.rstrip("/") + "/*.tar"))
        else:
            if not path.endswith(".tar"):
                return None
            found = [path] if fs.exists(path) else []
    except Exception as e:
        raise SceditError(f"data.source {url}: cannot list it ({type(e).__name__}: {str(e)[:120]}); check the "
                          "URL and that its fsspec backend is installed") from None
    if not found:
        raise SceditError(f"data.source {url}: no .tar shard there; check the URL")
    local = "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))
    return [f if local else fs.unstrip_protocol(f) for f in found]  # file:// shards are read as plain paths


def _open(url: str):
    if _is_url(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def _stat(url: str) -> tuple[int, str]:
    if _is_url(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        return int(info.get("size") or 0), str(info.get("mtime") or info.get("ETag") or info.get("LastModified"))
    st = os.stat(url)
    return st.st_size, str(st.st_mtime_ns)


def _caption(name: str, raw: bytes) -> str | None:
    try:
        if name.endswith(".txt"):
            return raw.decode("utf-8").strip()
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None  # the sample then has no caption and is skipped and counted when loaded
    text = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
    return None if text is None else str(text)


def index_shard(url: str) -> list[dict]:
    """One shard's samples in tar order: {"key", "members": {suffix: [offset, size, name]}, "text"}."""
    samples: dict[str, dict] = {}
    try:
        with _open(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for ti in tar:
                if not ti.isfile():
                    continue
                head, _, base = ti.name.rpartition("/")
                stem, dot, suffix = base.partition(".")
                if not dot or stem.startswith("_"):
                    continue  # webdataset ignores names without a suffix and `__`-prefixed metadata
                key = f"{head}/{stem}" if head else stem
                s = samples.setdefault(key, {"key": key, "members": {}, "text": None})
                s["members"][suffix.lower()] = [ti.offset_data, ti.size, ti.name]
                if suffix.lower() == "txt" or (suffix.lower() == "json" and s["text"] is None):
                    text = _caption(ti.name, tar.extractfile(ti).read())
                    if text is not None:
                        s["text"] = text
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SceditError(f"{url}: not a readable tar shard ({type(e).__name__}: {str(e)[:120]}); re-download it "
                          "or leave it out of data.source") from None
    return list(samples.values())


def default_index_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scedit" / "shard-index"


def cached_index(url: str, index_dir: Path) -> list[dict]:
    """`index_shard(url)`, read from `index_dir` when this shard (URL, size, mtime) was indexed before."""
    size, mtime = _stat(url)
    tag = hashlib.sha256(json.dumps([INDEX_VERSION, url, size, mtime]).encode()).hexdigest()[:24]
    path = index_dir / f"{tag}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())["samples"]
        except (ValueError, KeyError):
            pass  # a damaged index entry is rebuilt below
    samples = index_shard(url)
    index_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"url": url, "size": size, "mtime": mtime, "samples": samples})
    return samples


@dataclass
class ShardTable:
    urls: list[str]
    columns: dict[str, list]

    def __len__(self) -> int:
        return len(self.columns["__key__"])


def shard_table(urls: list[str], index_dir: Path, image_column: str = "image", text_column: str = "text") -> ShardTable:
    """Every shard's samples as columns: `__key__`, `__shard__`, the image and text columns, and one
    column per other member suffix ending in .png (condition maps); cells are member references."""
    rows = []
    for k, url in enumerate(urls):
        for s in cached_index(url, index_dir):
            rows.append((k, s))
    extra = sorted({suf[: -len(".png")] for _, s in rows for suf in s["members"]
                    if suf.endswith(".png") and suf != "png"})
    cols: dict[str, list] = {"__key__": [], "__shard__": [], image_column: [], text_column: []}
    cols.update({c: [] for c in extra if c not in cols})

    def ref(k, m):
        return None if m is None else {"shard": k, "offset": m[0], "size": m[1], "name": m[2]}

    for k, s in rows:
        mem = s["members"]
        cols["__key__"].append(s["key"])
        cols["__shard__"].append(k)
        cols[image_column].append(ref(k, next((mem[x] for x in IMAGE_SUFFIXES if x in mem), None)))
        cols[text_column].append(s["text"])
        for c in extra:
            if c not in (image_column, text_column):
                cols[c].append(ref(k, mem.get(f"{c}.png")))
    return ShardTable(urls, cols)


class ShardReader:
    """Turns a row's member references into {"bytes", "path"} cells (what `cells.open_image` reads).
    Opens the shard per read, so forked DataLoader workers never share a file position."""

    def __init__(self, urls: list[str]):
        self.urls = list(urls)

    def read(self, ref: dict) -> dict:
        url = self.urls[ref["shard"]]
        where = f"{url}:{ref['name']}"
        try:
            with _open(url) as f:
                f.seek(ref["offset"])
                data = f.read(ref["size"])
        except OSError as e:
            raise BadSample(f"{where}: unreadable ({type(e).__name__}: {str(e)[:80]})") from None
        return {"bytes": data, "path": where}

    def resolve(self, row: dict) -> dict:
        return {k: self.read(v) if isinstance(v, dict) and "offset" in v else v for k, v in row.items()}
