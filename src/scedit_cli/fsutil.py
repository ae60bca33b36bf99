"""File helpers: atomic writes (a reader never sees a half-written output or
checkpoint) and JSON-lines reading with errors that name the file and line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Iterator

from .errors import SceditError


def _new_temp(path: Path, make) -> Path:
    """A fresh hidden name beside `path`, created by `make(name)` (which fails if it exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            make(tmp)
            return tmp
        except FileExistsError:
            continue


def _create_file(p: Path) -> None:
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


# Outputs get the user's umask like any other file. The temp is created with 0o666 / 0o777, so
# the kernel applies the umask and its mode *is* the wanted one (no racy os.umask() round trip);
# writers that replace the temp with their own 0600 file (safetensors >= 0.5 writes through a
# temp of its own) are set back to it before the rename.


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    The temp file lives in the same folder so the final `os.replace` is atomic.
    On error the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    tmp_path = _new_temp(path, _create_file)
    mode = stat.S_IMODE(os.stat(tmp_path).st_mode)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; swap it into place on success."""
    path = Path(path)
    tmp = _new_temp(path, lambda p: os.mkdir(p, 0o777))
    old = path.with_name(f".{path.name}.old")
    moved = False
    try:
        yield tmp
        _set_modes(tmp, stat.S_IMODE(os.stat(tmp).st_mode))
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            moved = True
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if moved and not path.exists():  # interrupted between the two renames: put the old one back
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def looks_like_path(s: str) -> bool:
    """Whether a source string is meant as a file path (not a hub id) even when nothing is there."""
    return s.startswith(("./", "../", "/", "~", ".\\", "..\\")) or s.endswith(
        (".safetensors", ".ckpt", ".parquet", ".jsonl", ".json", ".csv")
    )


def _set_modes(folder: Path, dir_mode: int) -> None:
    """Every folder under `folder` to `dir_mode`, every file to it without execute bits."""
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            if not os.path.islink(os.path.join(root, d)):
                os.chmod(os.path.join(root, d), dir_mode)
        for f in files:
            if not os.path.islink(os.path.join(root, f)):
                os.chmod(os.path.join(root, f), dir_mode & 0o666)


def remove_paths(folder: Path, names) -> None:
    """Remove each of `names` (a file or a folder) from `folder` where it exists."""
    for name in names:
        p = Path(folder) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's contents, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_jsonl(path: str | os.PathLike, fix: str) -> list[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSON-lines file.

    A line that is not JSON is a one-line `SceditError` naming the file, the
    line and `fix` (what the user should do about it).
    """
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise SceditError(f"{path} line {n} is not valid JSON ({e.msg}); {fix}") from None
    return rows


def check_output_location(path: str | os.PathLike, what: str, folder: bool = True) -> Path:
    """Fail early, before any slow work, when `path` cannot become the output folder (`folder`) or file
    that `what` (an option or recipe key) names: a file in the way, no permission, a read-only disk.
    Creates nothing; returns `path` with `~` expanded."""
    path = Path(path).expanduser()
    if path.exists() and folder != path.is_dir():
        raise SceditError(f"{what} {path}: exists and is not a {'folder' if folder else 'file'}; choose another path")
    probe = path if folder and path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SceditError(f"{what} {path}: {probe} is a file, so no folder can be made there; choose another path")
    if hasattr(os, "statvfs") and os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise SceditError(f"{what} {path}: {probe} is on a read-only file system; choose a folder you can write to")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SceditError(f"{what} {path}: no permission to write in {probe}; choose a folder you can write to")
    return path


def read_torch_weights(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers, never code.

    Raises `ValueError` with a one-line reason: torch's own errors run to several lines and
    advise `weights_only=False`, which would run whatever code the file holds.
    """
    import pickle
    import warnings

    import torch

    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] != b"\x80" and head != b"PK":  # neither a pickle (protocol 2+) nor torch's zip format
        raise ValueError("not a PyTorch weights file (neither a pickle nor a torch.save zip archive)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # notes on pickle protocols it then reads anyway
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        detail = text.split("WeightsUnpickler error:", 1)[-1]
        first = next((line.strip() for line in detail.splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"refused to load: the pickle holds more than tensors ({first[:200]}); scedit only "
                         "unpickles with weights_only=True") from None
    except Exception as e:  # noqa: BLE001 - KeyError, EOFError, RuntimeError...: not a torch file at all
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise ValueError(f"not a PyTorch weights file ({type(e).__name__}{': ' + first[:200] if first else ''})") \
            from None
