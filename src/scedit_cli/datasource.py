"""Where training data comes from: a dataset folder or file, or a hub dataset, read with `datasets`.

Sources: webdataset tar shards (`shards.py`: a `.tar`, a list, `{000..009}` ranges, a
glob or a folder of them, local or any fsspec URL), a folder with `metadata.jsonl` (what `scedit prepare` writes; paths in
it are relative to the folder), a folder of `*.parquet` / `*.jsonl` files, a
single `.parquet` / `.jsonl` / `.json` / `.csv` file, or a hub dataset name
(loaded offline from the HF cache when there is no network). Nothing here
writes to the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SceditError
from .fsutil import read_jsonl
from .shards import ShardReader, default_index_dir, shard_table, shard_urls


@dataclass
class LoadedDataset:
    dataset: Any  # datasets.Dataset
    base_dir: Path | None  # where relative image paths resolve
    description: str
    reader: ShardReader | None = None  # resolves shard member references (webdataset sources)

    def __len__(self) -> int:
        return len(self.dataset)

    def row(self, index: int) -> dict:
        row = self.dataset[int(index)]
        return self.reader.resolve(row) if self.reader is not None else row


def _load_dataset_files(kind: str, files: list[Path], desc: str):
    import datasets
    from datasets.utils import logging as dlog

    verbosity = dlog.get_verbosity()
    dlog.set_verbosity(dlog.CRITICAL)  # it logs each failure as well as raising it; ours is the one line
    try:
        return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as e:  # datasets raises many kinds (ArrowInvalid, DatasetGenerationError, ...)
        _explain_unreadable(files)  # its messages rarely say which file and line
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SceditError(f"{desc}: cannot read the dataset ({first}); check the file format") from None
    finally:
        dlog.set_verbosity(verbosity)


_EXAMPLE = '{"image": "images/0.png", "text": "a caption"}'


def _explain_unreadable(files: list[Path]) -> None:
    """Raise the reason `datasets` could not read `files` when it is one we can name exactly:
    an empty file, or a JSON-lines line that is not JSON. Only called after a failure."""
    for f in files:
        if not f.read_bytes().strip():
            raise SceditError(f"{f}: the file is empty; a dataset needs one row per training image, e.g. {_EXAMPLE}")
        if f.suffix.lower() == ".jsonl":
            try:
                read_jsonl(f, f"each line must be one JSON object such as {_EXAMPLE}; fix or delete that line")
            except UnicodeDecodeError as e:
                raise SceditError(f"{f}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


_EMPTY_SOURCE = "data.source is empty; set it to a dataset folder, file or hub name"
_KINDS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


@dataclass
class LocalFiles:
    """A local data source: its `datasets` builder and files."""

    kind: str  # "json", "parquet", "csv"
    files: list[Path]
    base_dir: Path
    description: str
    read_desc: str  # what a read error names


def local_files(source: str) -> LocalFiles | None:
    """The files of a local dataset folder or file (None: not a local path, maybe a hub name)."""
    path = Path(source).expanduser()
    if path.is_dir():
        meta = path / "metadata.jsonl"
        if meta.is_file():
            return LocalFiles("json", [meta], path, str(path), str(meta))
        for ext in (".parquet", ".jsonl"):
            files = sorted(path.glob(f"*{ext}")) or sorted(path.glob(f"*/*{ext}"))
            if files:
                return LocalFiles(_KINDS[ext], files, path, str(path), str(path))
        raise SceditError(
            f"{path}: no metadata.jsonl, *.parquet or *.jsonl in this folder; make one with `scedit prepare` "
            "or point data.source at the dataset file"
        )
    if path.is_file():
        kind = _KINDS.get(path.suffix.lower())
        if kind is None:
            raise SceditError(f"{path}: unsupported dataset file type {path.suffix!r}; use .parquet, .jsonl, .json or .csv")
        return LocalFiles(kind, [path], path.parent, str(path), str(path))
    if source.startswith((".", "/", "~")) or path.suffix.lower() in _KINDS:
        raise SceditError(f"{source}: dataset not found; check data.source (relative paths start at the recipe's folder)")
    return None


def check_data_source(source: str) -> None:
    """Refuse a `source` that names a local dataset which is not there or holds none, reading no
    data and importing neither torch nor `datasets` (`scedit train` calls it before its heavy
    imports: a wrong path costs a second, not ten). URLs and hub names are left to `load_source`."""
    if not source:
        raise SceditError(_EMPTY_SOURCE)
    if "://" in source:
        return
    if shard_urls(source) is None:
        local_files(source)


def _hub_error(source: str, split: str, e: Exception) -> SceditError:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return SceditError(
        f"dataset {source!r} split {split!r} could not be loaded ({first}); it is neither a local path nor a "
        "hub dataset in the HF cache: download it with `hf download --repo-type dataset "
        f"{source}` on a machine with internet, or set data.source to a local folder"
    )


def stream_source(source: str, split: str = "train") -> LoadedDataset:
    """`source` (a local dataset folder or file, or a hub name) as a `datasets.IterableDataset`
    read as it goes: nothing is converted or indexed first. Webdataset shards are refused: they
    are already read as a stream by `shards.py`."""
    import datasets

    if not source:
        raise SceditError(_EMPTY_SOURCE)
    if shard_urls(source) is not None:
        raise SceditError(f"data.source {source}: webdataset shards are already read shard by shard from an index; "
                          "set data.streaming = false for them")
    local = local_files(source)
    try:
        if local is not None:
            ds = datasets.load_dataset(local.kind, data_files=[str(f) for f in local.files], split="train",
                                       streaming=True)
            return LoadedDataset(ds, local.base_dir, local.description)
        return LoadedDataset(datasets.load_dataset(source, split=split, streaming=True), None, source)
    except SceditError:
        raise
    except Exception as e:
        if local is None:
            raise _hub_error(source, split, e) from None
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SceditError(f"{local.read_desc}: cannot read the dataset ({first}); check the file format") from None


def load_source(source: str, split: str = "train", index_dir: Path | None = None) -> LoadedDataset:
    """The raw `datasets.Dataset` behind a data source (see the module docstring); shard indexes
    are kept in `index_dir` (default: `shards.default_index_dir()`)."""
    import datasets

    if not source:
        raise SceditError(_EMPTY_SOURCE)
    urls = shard_urls(source)
    if urls is not None:
        table = shard_table(urls, index_dir or default_index_dir())
        if not len(table):
            raise SceditError(f"data.source {source}: its {len(urls)} shard(s) hold no sample; check the shards")
        desc = urls[0] if len(urls) == 1 else f"{source} ({len(urls)} shards)"
        # Local shards in one folder keep the latent cache beside them as a dataset folder does.
        folders = {str(Path(u).parent) for u in urls if "://" not in u}
        base = Path(folders.pop()) if len(folders) == 1 and all("://" not in u for u in urls) else None
        return LoadedDataset(datasets.Dataset.from_dict(table.columns), base, desc, ShardReader(urls))
    local = local_files(source)
    if local is not None:
        return LoadedDataset(_load_dataset_files(local.kind, local.files, local.read_desc), local.base_dir,
                             local.description)
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:
        raise _hub_error(source, split, e) from None
    return LoadedDataset(ds, None, source)

