"""A real Hugging Face cache layout in tmp_path, for Hub ids read offline."""

from __future__ import annotations

import shutil

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
COMMIT_V1 = "89abcdef0123456789abcdef0123456789abcdef"


def add_to_cache(cache, repo_id: str, files: dict, commit: str = COMMIT, ref: str = "main"):
    """Put `files` (repo path -> local file) into `cache` the way huggingface_hub lays out a download."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    for name, src in files.items():
        dst = repo / "snapshots" / commit / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return repo / "snapshots" / commit


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF cache for this test (huggingface_hub read HF_HUB_CACHE at import, so patch both)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
