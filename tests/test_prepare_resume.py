"""Kill a prepare run mid-way (SIGKILL, no cleanup), resume it: the result equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from test_prepare_conditions import make_images, read_rows, tree_digest

from scedit_cli.prepare.runner import PrepareConfig, run_prepare

# The child is the library runner in its own process group. Its progress bar
# sleeps on each record so the kill reliably lands mid-run, while the two
# worker processes keep finishing records ahead of the (slow) journal: the kill
# leaves files that are written but not journalled, and files still in staging.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from scedit_cli.prepare.runner import PrepareConfig, run_prepare

    class SlowBar:
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def add_task(self, *a, **k): return 0
        def advance(self, *a): time.sleep(0.15)

    run_prepare(PrepareConfig("inpaint", sys.argv[1], Path(sys.argv[2]), seed=3, workers=2, pool="processes"),
                progress_factory=SlowBar)
    """
)


def start_child(src, out) -> subprocess.Popen:
    """CHILD on `src` -> `out`, in a session of its own (its workers and resource tracker join it)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out)], env=env, start_new_session=True)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    src = tmp_path / "in"
    n = 24
    make_images(src, n, size=128)
    reference = tmp_path / "reference"
    run_prepare(PrepareConfig("inpaint", str(src), reference, seed=3))

    out = tmp_path / "out"
    journal = out / ".scedit-prepare" / "journal-0-of-1.jsonl"
    child = start_child(src, out)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_text().count("\n") >= 4:
                break
            assert child.poll() is None, "prepare child exited before it could be killed"
            time.sleep(0.01)
        else:
            raise AssertionError("prepare child wrote no journal entries within 60 s")
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the child and its workers: the group we started
        child.wait()

    done_before = journal.read_text().count("\n")
    assert 4 <= done_before < n, "the kill must land mid-run"
    assert not (out / "metadata.jsonl").exists()

    summary = run_prepare(PrepareConfig("inpaint", str(src), out, seed=3, workers=2))
    assert summary.resumed == done_before and summary.written_this_run == n - done_before
    assert tree_digest(out) == tree_digest(reference)
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted(e["i"] for e in lines) == list(range(n))  # each record exactly once
    assert len(read_rows(out)) == n
    assert not list(out.rglob("*.tmp")) and not list((out / ".scedit-prepare").glob("staging-*"))
    # every file in the dataset is one the metadata names: nothing half-written or stray
    named = {v for r in read_rows(out) for k, v in r.items() if k != "text"}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".scedit-prepare" not in p.parts}
    assert on_disk - {"metadata.jsonl", "prepare-report.json"} == named


def test_torn_journal_line_is_dropped(tmp_path):
    src = tmp_path / "in"
    make_images(src, 3)
    out = tmp_path / "out"
    run_prepare(PrepareConfig("color", str(src), out))
    journal = out / ".scedit-prepare" / "journal-0-of-1.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed mid-append
    summary = run_prepare(PrepareConfig("color", str(src), out))
    assert summary.resumed == 1 and summary.written_this_run == 2
    assert journal.read_text().count("\n") == 3


def _session(sid: int) -> dict[int, str]:
    """Live (not zombie) processes of session `sid`: pid -> command line."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state != "Z":
            found[int(d)] = cmd
    return found


def test_workers_and_resource_tracker_end_with_a_parent_killed_by_sigkill(tmp_path):
    src = tmp_path / "in"
    make_images(src, 24, size=128)
    out = tmp_path / "out"
    journal = out / ".scedit-prepare" / "journal-0-of-1.jsonl"
    child = start_child(src, out)
    try:
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_text().count("\n") >= 2 and len(_session(child.pid)) >= 3):
            assert child.poll() is None, "prepare child exited before it could be killed"
            assert time.monotonic() < deadline, f"no two workers at work within 60 s: {_session(child.pid)}"
            time.sleep(0.01)
        helpers = set(_session(child.pid)) - {child.pid}
        assert len(helpers) >= 2, "two workers (and the resource tracker)"
        os.kill(child.pid, signal.SIGKILL)  # the parent only: nothing of it can shut the pool down
        child.wait()
        deadline = time.monotonic() + 10
        while _session(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _session(child.pid), f"still running after the parent was killed: {_session(child.pid)}"
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
