"""A SceditError raised inside a DataLoader worker process reaches the user as its own one line."""

from __future__ import annotations

import pytest
import torch

from scedit_cli.errors import SceditError, worker_batches


class _Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            raise SceditError("data/metadata.jsonl:3: column 'canny' names a missing file; fix the row", exit_code=3)
        return torch.tensor([i])


def test_worker_error_comes_back_as_its_own_line():
    loader = torch.utils.data.DataLoader(_Rows(), batch_size=1, num_workers=1)
    with pytest.raises(SceditError) as raw:  # what PyTorch does on its own: the worker's traceback as the message
        list(loader)
    assert "Traceback" in str(raw.value) and "\n" in str(raw.value)
    got = []
    with pytest.raises(SceditError) as e:
        for batch in worker_batches(loader):
            got.append(int(batch))
    assert got == [0, 1]
    assert str(e.value) == "data/metadata.jsonl:3: column 'canny' names a missing file; fix the row"


def test_errors_of_this_process_pass_unchanged():
    def batches():
        yield 1
        raise SceditError("line one\nline two")

    with pytest.raises(SceditError, match="line one\nline two"):
        list(worker_batches(batches()))
    assert list(worker_batches([1, 2])) == [1, 2]
