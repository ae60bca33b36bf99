"""Where a run's checkpoints are and which are complete, read without torch (`checkpoint.py` writes and
loads them): a new run checks its output folder for another run's checkpoints before anything loads."""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of each complete checkpoint (its `state.json` written last), in step order."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)
