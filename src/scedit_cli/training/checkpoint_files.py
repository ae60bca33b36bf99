"""Where a run's checkpoints are, which are complete and which one `--resume` names, without torch
(`checkpoint.py` writes and loads them): `scedit train` checks these before anything loads."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import SceditError

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


def find_checkpoint(output_dir, resume: str) -> Path:
    """`latest` -> the newest checkpoint under OUTPUT/checkpoints; otherwise a checkpoint folder path."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise SceditError(
                f"--resume latest: no checkpoint under {checkpoint_root(output_dir)}; start without --resume"
            )
        return found[-1][1]
    path = Path(resume).expanduser()
    if not (path / "state.json").is_file():
        raise SceditError(f"--resume {resume}: not a checkpoint folder (no state.json); pass 'latest' or "
                          f"a folder such as {checkpoint_root(output_dir)}/step-00001000")
    return path
