"""`scedit quickstart` (not built yet)."""

from __future__ import annotations

import typer

from . import app
from ._notbuilt import not_built


@app.command(
    "quickstart",
    help="NOT BUILT YET: exits with an error.",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def quickstart_command(ctx: typer.Context) -> None:
    not_built("quickstart", "planned")
