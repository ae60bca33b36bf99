"""Terminal output shared by every command: rich on a terminal, plain in CI.

Progress bars and tables go to stderr so that `--json` output on stdout stays
machine-readable; bars disappear when stderr is not a terminal.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

def _console(stderr: bool = False) -> Console:
    """A console; off a terminal (CI logs, pipes) 160 columns wide unless COLUMNS says otherwise, so
    tables are not squeezed into rich's default 80."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160)
    return console


err_console = _console(stderr=True)
out_console = _console()


def progress(*extra_columns: Any, transient: bool = False) -> Progress:
    """A rich progress bar that steps aside when stderr is not a terminal."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # descriptions may hold folder names
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=not err_console.is_terminal,
    )


def print_json(data: Any) -> None:
    """Write `data` as JSON on stdout (one document, no rich markup)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str, style: str | None = None) -> None:
    """`message` on stderr as written: paths and values in it may hold brackets, which markup would read
    as tags (a stray closing tag raises, others vanish); `style` styles the whole line instead. Never
    wrapped by us (off a terminal rich would break lines at 80 columns, and a log's lines at random)."""
    err_console.print(message, highlight=False, markup=False, style=style, soft_wrap=True)


def warn(message: str) -> None:
    """`warning: message` on stderr as one line (never wrapped or read as markup), like an error."""
    err_console.print(f"warning: {message}", highlight=False, soft_wrap=True, markup=False)


def quiet_loaders() -> None:
    """Our own progress bar reports the run; the loaders' bars (diffusers, transformers, datasets)
    would interleave with it."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    else:  # read when `datasets` is imported: importing it here would add ~1 s to runs that never read data
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
