"""The scripts in benchmarks/, loaded or run as their command line runs them, for the tests that check them."""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (its `main(argv)` then runs it in this process)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exit_code_as_main(name: str, argv: list[str], monkeypatch) -> int | str | None:
    """The exit code of `python benchmarks/<name>.py ARGV`, run in this process."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{name}.py"), *argv])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCHMARKS / f"{name}.py"), run_name="__main__")
    return done.value.code
