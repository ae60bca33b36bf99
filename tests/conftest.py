"""Shared test setup: offline hub, tiny real diffusers architectures, CPU only."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from tiny_models import tiny_unet_config, make_tiny_unet  # noqa: E402,F401

# Tiny models run fastest on one thread; two threads only fight each other
# (and parallel jobs) on a 2-core machine: measured 7-10x slower there.
torch.set_num_threads(1)


@pytest.fixture
def tiny_unet():
    """A tiny SD-1.5-shaped U-Net (4 down blocks -> 12 skips), random weights."""
    return make_tiny_unet("sd15")


@pytest.fixture
def tiny_sdxl_unet():
    """A tiny SDXL-shaped U-Net (3 down blocks -> 9 skips, text_time added conditions)."""
    return make_tiny_unet("sdxl")


def pytest_collection_modifyitems(config, items):
    """Modules marked `slow` first (stable otherwise): `--dist loadfile` hands whole files to the two
    workers in this order, and a long file started last leaves the other worker idle at the end."""
    def heavy(item):
        marks = getattr(item.module, "pytestmark", [])
        return any(m.name == "slow" for m in (marks if isinstance(marks, list) else [marks]))

    items.sort(key=lambda item: 0 if heavy(item) else 1)
