"""The `scedit` command line as a whole: commands present, errors as one line."""

from __future__ import annotations

import subprocess
import sys


def _scedit(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "scedit_cli.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_every_command():
    proc = _scedit("--help")
    assert proc.returncode == 0
    for name in ("prepare", "train", "sample", "compose", "eval", "bench", "convert", "quickstart"):
        assert name in proc.stdout, name


def test_user_error_is_one_line_without_traceback(tmp_path):
    proc = _scedit("train", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "missing.toml" in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = _scedit("--debug", "train", str(tmp_path / "missing.toml"))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
