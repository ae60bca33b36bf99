"""File helpers: atomic writes (a reader never sees a half-written output or
checkpoint) and JSON-lines reading with errors that name the file and line."""

from __future__ import annotations

import contextlib
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
