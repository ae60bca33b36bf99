"""User-facing errors.

Every bad input ends in one `SceditError` whose message is a single line naming
the file, key or value at fault and what would fix it. The CLI prints it
without a traceback (unless `--debug`) and exits with `exit_code`.
"""

from __future__ import annotations


class SceditError(Exception):
    """An error caused by the user's input or environment, not by a bug."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class SettingError(SceditError):
    """A bad value of one setting `key` (a field of a config dataclass). Whoever knows where the
    setting came from names it there: a recipe as `method.<key>` (`recipes.py`)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.detail = key, message


def worker_batches(batches):
    """Iterate a DataLoader's batches; a SceditError raised in one of its worker processes comes back from
    PyTorch with the worker's whole traceback as its message: give it back its own one line."""
    marker = f"{SceditError.__module__}.{SceditError.__name__}: "
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except SceditError as e:
            text = str(e)
            if "DataLoader worker" not in text or marker not in text:
                raise
            raise SceditError(text.rsplit(marker, 1)[1].strip(), exit_code=e.exit_code) from None
        yield batch
