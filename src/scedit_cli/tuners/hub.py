"""Tuners on the Hugging Face Hub: `user/repo[/sub/folder][@revision]` wherever a tuner is read.

A tuner source is a local tuner folder or `.safetensors` file, or a Hub model repo id:

    user/repo                     the tuner files at the repo's top level (branch main)
    user/repo@v1.0                a branch, tag or commit (also `refs/pr/3`: everything after the `@`)
    user/repo/canny/tuner         the tuner folder `canny/tuner` inside the repo
    user/repo/canny/tuner@v1.0    both

A local path that exists always wins. Hub tuners are fetched with
`huggingface_hub.snapshot_download` (only the tuner files and the model card),
which serves them from the local HF cache when HF_HUB_OFFLINE=1 or the hub is
unreachable; a repo that is not there is the same one-line error as a missing
base model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SceditError
from ..fsutil import looks_like_path
from ..hubutil import hub_offline, hub_source_error
from .files import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

# huggingface_hub's repo id rule: letters, digits, `-`, `_`, `.`; no `--` or `..`; no leading/trailing `-`/`.`.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SOURCE = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?P<sub>(?:/[^/@]+)*)(?:@(?P<rev>.+))?$")


@dataclass(frozen=True)
class HubTunerSource:
    repo_id: str
    subfolder: str = ""
    revision: str | None = None

    def download_args(self) -> str:
        """Arguments of `hf download` that fetch these files."""
        args = self.repo_id
        if self.subfolder:
            args += " --include '" + "' '".join(f"{self.subfolder}/{n}" for n in (WEIGHTS_NAME, CONFIG_NAME)) + "'"
        return args + (f" --revision {self.revision}" if self.revision else "")


def parse_hub_source(source: str) -> HubTunerSource | None:
    """The Hub repo, subfolder and revision that `source` names, or None if it is not Hub syntax."""
    text = str(source).strip()
    if looks_like_path(text) or "\\" in text or re.match(r"^[A-Za-z]:", text):
        return None
    m = _SOURCE.match(text)
    if m is None or ".." in m["repo"] or "--" in m["repo"]:
        return None
    sub = m["sub"].strip("/")
    if any(part in (".", "..") for part in sub.split("/") if sub):
        return None
    return HubTunerSource(m["repo"], sub, m["rev"])


def resolve_tuner_source(source: str) -> Path:
    """A local tuner folder or file for `source` (a path, or a Hub id fetched into / read from the HF cache)."""
    path = Path(str(source)).expanduser()
    if path.exists():
        return path
    hub = parse_hub_source(str(source))
    if hub is None:
        raise SceditError(
            f"{source}: tuner file not found; pass a tuner folder, its {WEIGHTS_NAME}, or a Hub repo id "
            "user/repo[/sub/folder][@revision]"
        )
    from huggingface_hub import snapshot_download

    prefix = f"{hub.subfolder}/" if hub.subfolder else ""
    try:
        snapshot = snapshot_download(
            hub.repo_id,
            revision=hub.revision,
            allow_patterns=[prefix + n for n in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)],
            local_files_only=hub_offline(),
        )
    except (OSError, ValueError) as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError, ...
        raise hub_source_error("tuner", str(source), e, f"a local tuner folder (there is none at {path})",
                               hub.download_args()) from None
    folder = Path(snapshot) / hub.subfolder if hub.subfolder else Path(snapshot)
    if not (folder / WEIGHTS_NAME).is_file():
        where = f"{hub.repo_id}" + (f" folder {hub.subfolder!r}" if hub.subfolder else "") + \
            (f" at revision {hub.revision}" if hub.revision else "")
        raise SceditError(
            f"{source}: no {WEIGHTS_NAME} in {where} (cached at {folder}); name the repo folder that holds the "
            "tuner files, e.g. user/repo/sub/folder"
        )
    return folder
