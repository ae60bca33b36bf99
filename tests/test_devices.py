"""devices.resolve_device: the one rule for --device in sampling, the cache, detectors and bench."""

import pytest
import torch

from scedit_cli.devices import resolve_device
from scedit_cli.errors import SceditError


def test_auto_and_named_devices():
    want = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == want and resolve_device("auto") == want
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"


def test_bad_devices_are_refused_with_one_line():
    with pytest.raises(SceditError, match=r"^--device 'gpu0': unknown device; use auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SceditError, match=r"^--device cuda:1: CUDA is not available on this machine; use --device cpu$"):
            resolve_device("cuda:1")
