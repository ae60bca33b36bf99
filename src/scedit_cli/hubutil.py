"""What base models and tuners share about the Hugging Face Hub: offline mode and the one-line
error for a hub id that cannot be loaded (not cached while offline, no such repo, ...)."""

from __future__ import annotations

import os

from .errors import SceditError


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as the user set it for this run (huggingface_hub reads it only at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


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
