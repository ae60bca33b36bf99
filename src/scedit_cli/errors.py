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

