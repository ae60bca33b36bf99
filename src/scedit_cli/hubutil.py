"""What base models and tuners share about the Hugging Face Hub: offline mode and the one-line
error for a hub id that cannot be loaded (not cached while offline, no such repo, ...)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SceditError


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as the user set it for this run (huggingface_hub reads it only at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def check_model_source(source: str) -> None:
    """Refuse a base model `source` that names a local file or folder which is not there. A hub id is
    `user/repo`: never `./x`, `/x`, `~/x` or `x.safetensors`. Needs no torch, so commands call it before
    their heavy imports (a mistyped path is then reported at once, not after ~15 s)."""
    path = Path(source).expanduser()
    if not path.exists() and (path.suffix in (".safetensors", ".ckpt") or source.startswith((".", "/", "~"))):
        raise SceditError(f"{source}: model file or folder not found")


def first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def hub_source_error(what: str, source: str, e: BaseException, local: str, download: str | None = None) -> SceditError:
    """`cannot load {what} 'source' (why); it is not in the local HF cache ...: download it or pass {local}`.

    `download`: the arguments of `hf download` that fetch it (default: `source`)."""
    return SceditError(
        f"cannot load {what} {source!r} ({first_line(e)}); it is not in the local HF cache and the hub is "
        f"offline: run `hf download {download or source}` on a machine with internet, or pass {local}"
    )
