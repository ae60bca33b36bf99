"""The `scedit` command line: one thin Typer wrapper per library function.

Each sub-command lives in its own module here and registers itself on `app`.
Errors a user can fix are `SceditError`s: printed as one line, no traceback
(unless `--debug`), with a non-zero exit code.
"""

from __future__ import annotations

import os
import sys

import typer
import typer.main

from ..errors import SceditError

def command_group(**kwargs) -> typer.Typer:
    """A Typer app (the CLI and each command group) whose help texts are shown as written: they name hub ids
    such as `user/repo[/sub/folder][@revision]`, which rich markup would read as tags (a closing tag with
    no opening one made `--help` fail)."""
    return typer.Typer(rich_markup_mode=None, **kwargs)


app = command_group(
    name="scedit",
    help="SCEdit: efficient tuning and controllable generation of diffusion models by editing skip connections.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_NOTHING_YET = "nothing was written; run the command again"  # Ctrl-C before a command says what it keeps
_state = {"debug": False, "interrupt": _NOTHING_YET}

# Every dependency that logs through its own logger, and the environment variable that sets its level
# (environment variables reach spawned workers too, and cost no import).
_DEPENDENCY_LOG_LEVELS = {
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "ACCELERATE_LOG_LEVEL": "error",
}


def _quiet_dependencies() -> None:
    """Dependencies' deprecation notes and advice are for library authors: users see them with --debug only.
    scedit itself says what a user needs to know with `console.info`, never through `warnings`."""
    import warnings

    for name, level in _DEPENDENCY_LOG_LEVELS.items():
        os.environ.setdefault(name, level)
    if "PYTHONWARNINGS" not in os.environ and not sys.warnoptions:  # else the user chose what to see
        os.environ["PYTHONWARNINGS"] = "ignore"  # worker processes
        warnings.simplefilter("ignore")


def _print_version(asked: bool) -> None:
    if asked:
        from .. import __version__

        typer.echo(f"scedit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors, and dependencies' warnings."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print scedit's version and exit."),
) -> None:
    _state["debug"] = debug or bool(os.environ.get("SCEDIT_DEBUG"))
    if not _state["debug"]:
        _quiet_dependencies()


def on_interrupt(kept: str) -> None:
    """What a Ctrl-C from here on leaves behind and how to continue: the line `main` prints before exit 130.
    Every command calls it first thing, with its own outputs."""
    _state["interrupt"] = kept


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

# The click that typer uses: typer >= 0.2x bundles its own copy (`typer._click`), older typer uses click
# itself; `typer.BadParameter` comes from whichever it is, so its module holds the exception classes.
_click_errors = sys.modules[typer.BadParameter.__module__]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every way a command ends is an exit code and, on failure, one line.

    The click command is invoked directly, not through typer's `main`, which in non-standalone mode
    turns Ctrl-C into a returned 130 that nothing would see.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    _state["interrupt"] = _NOTHING_YET
    command = typer.main.get_command(app)
    try:
        with command.make_context("scedit", args) as ctx:
            command.invoke(ctx)
    except SceditError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        typer.echo(f"interrupted: {_state['interrupt']}", err=True)
        sys.exit(130)
    except _click_errors.ClickException as e:  # unknown option, bad value, missing argument: click's own message
        e.show()
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as e:
        if _state["debug"]:
            raise
        if isinstance(e, OSError) and e.filename:
            # A file or folder the environment does not let us use (permissions, read-only, full disk).
            where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
            typer.echo(f"error: {where}: {e.strerror or type(e).__name__}", err=True)
            sys.exit(2)
        typer.echo(f"error: {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
        sys.exit(1)
