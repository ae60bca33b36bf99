"""The `scedit` command line: one thin Typer wrapper per library function.

Each sub-command lives in its own module here and registers itself on `app`.
Errors a user can fix are `SceditError`s: printed as one line, no traceback
(unless `--debug`), with a non-zero exit code.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import SceditError

app = typer.Typer(
    name="scedit",
    help="SCEdit: efficient tuning and controllable generation of diffusion models by editing skip connections.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug or bool(os.environ.get("SCEDIT_DEBUG"))
    if not _state["debug"]:
        # diffusers/transformers log advice meant for library authors; our own
        # messages say what a user needs to know. Set through their environment
        # variables so that commands which never import them start fast.
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _register() -> None:
    # Each module of this package adds its command(s) to `app` (or to a
    # sub-app such as `bench_app`) when imported; importing them all in name
    # order is the whole registry, so a new command is a new file.
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        # Without standalone mode, typer turns Ctrl-C (and typer.Exit) into a returned exit code.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            if code == 130:
                typer.echo("interrupted", err=True)
            sys.exit(code)
    except SceditError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if _state["debug"]:
            raise
        typer.echo(f"error: {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
        sys.exit(1)
