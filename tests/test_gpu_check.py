"""`benchmarks/gpu_check.sh`, rehearsed without a GPU: every command it would run parses.

A lent GPU machine comes rarely and for minutes, so the script must not fail there on an option that no
longer exists. The rehearsal runs the real script with `python3` and `nvidia-smi` replaced by programs
that only write down their arguments; each recorded call is then parsed here the way it would be there:
`scedit` commands by click, the benchmark scripts by their own argparse parsers (and their `--methods`
against the table's rows), pytest's test files by their existence.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from scedit_cli.bench.specs import TABLES, select_methods
from scedit_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
ALL_STAGES = "tests table1 table2 table5 probe profile sampling edit quickstart train peers"


def rehearse(tmp_path: Path, stages: str | None) -> list[list[str]]:
    """Run gpu_check.sh with recording stand-ins for python3, nvidia-smi and the peers' Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.jsonl"
    record = f"#!{sys.executable}\nimport json, sys\nopen({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    for name in ("python3", "nvidia-smi", "peer-python"):
        (bin_dir / name).write_text(record)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("STAGES", "PEER_PYTHON")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", OUT=str(tmp_path / "out"),
               PEER_PYTHON=str(bin_dir / "peer-python"), **({"STAGES": stages} if stages else {}))
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()]


def parse_scedit(args: list[str]):
    """Parse a `scedit` command line down to its subcommand, as click does before it runs anything."""
    command = typer.main.get_command(app)
    ctx = command.make_context("scedit", list(args))
    while hasattr(ctx.command, "resolve_command"):  # a group (typer's own copy of click's)
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, rest = ctx.command.resolve_command(ctx, rest)
        ctx = sub.make_context(name, rest, parent=ctx)
    return ctx


class _Parsed(Exception):
    pass


def parse_script(script: str, args: list[str], monkeypatch) -> argparse.Namespace:
    """The namespace a benchmark script's own parser makes of `args` (the script stops right there)."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise _Parsed(real(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    with pytest.raises(_Parsed) as parsed:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    monkeypatch.undo()
    return parsed.value.args[0]


@pytest.mark.parametrize("stages", [None, ALL_STAGES])
def test_every_command_of_the_gpu_check_parses(tmp_path, monkeypatch, stages):
    calls = rehearse(tmp_path, stages)
    seen = set()
    for call in calls:
        if call[:1] == ["-c"] or call[:1] == ["--query-gpu=name,memory.total,driver_version"]:
            continue
        if call[:2] == ["-m", "scedit_cli.cli"]:
            ctx = parse_scedit(call[2:])
            seen.add(ctx.command_path)
        elif call[:2] == ["-m", "pytest"]:
            tests = [a for a in call[2:] if a.startswith("tests/")]
            assert tests and all((ROOT / t).is_file() for t in tests), call
            seen.add("pytest")
        elif call[0].startswith("benchmarks/") and call[0].endswith(".py"):
            ns = parse_script(call[0], call[1:], monkeypatch)
            if hasattr(ns, "methods") and hasattr(ns, "table"):
                select_methods(TABLES[ns.table], ns.methods.split(","))  # an unknown row is an error
            seen.add(call[0])
        else:
            pytest.fail(f"gpu_check.sh runs a call this rehearsal does not know: {call}")
    expected = {"scedit bench table1", "scedit bench table2", "scedit bench sampling", "scedit quickstart",
                "scedit train", "pytest", "benchmarks/step_profile.py", "benchmarks/bench_skip_edit.py",
                "benchmarks/bench_peers.py"}
    if stages:
        expected |= {"scedit bench table5", "benchmarks/peak_probe.py"}
    assert seen == expected


def test_a_mistyped_option_is_caught(tmp_path, monkeypatch):
    # the checks above fail when an option is wrong, for both kinds of command
    with pytest.raises(sys.modules[typer.BadParameter.__module__].NoSuchOption):
        parse_scedit(["bench", "table1", "--devcie", "cuda"])
    with pytest.raises(SystemExit):
        parse_script("benchmarks/step_profile.py", ["--out", "x", "--batchsize", "32"], monkeypatch)
