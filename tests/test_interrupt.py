"""Ctrl-C in every command: exit 130 and one line saying what was kept and how to continue.

Each test runs the real CLI in its own session and sends SIGINT to the whole process group, as a
terminal's Ctrl-C does, once the command is certainly inside its work: it has loaded the library
it works with (seen in /proc/PID/maps), opened its input, or written its first outputs. A command
that ends before that point fails the test; nothing here skips.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scedit_cli.toy import base_model_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps (Linux)")


def interrupt(args: list[str], ready, timeout: float = 240.0) -> tuple[int, str]:
    """Run `scedit ARGS`, wait until `ready(pid)`, Ctrl-C its process group; (exit code, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # SIGINT back to its default in the child: a suite started in the background of a non-interactive shell
    # inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored (no KeyboardInterrupt to test).
    proc = subprocess.Popen([sys.executable, "-m", "scedit_cli.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + timeout
        while not ready(proc.pid):
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"`scedit {' '.join(args)}` ended (exit {proc.returncode}) before it could be "
                            f"interrupted:\n{err}{out}")
            if time.monotonic() > deadline:
                pytest.fail(f"`scedit {' '.join(args)}` did not reach the point to interrupt in {timeout} s")
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def mapped(library: str):
    """Ready once the process has loaded a shared library whose path contains `library`."""
    def ready(pid: int) -> bool:
        try:
            return library in Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return False
    return ready


def exists(path: Path):
    return lambda pid: path.exists()


def assert_one_line(code: int, err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert code == 130, err
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def toy_inputs(tmp_path: Path) -> Path:
    """A recipe on the toy base with a one-image dataset, a control image, a (stand-in) tuner folder
    and checkpoint: the commands check that their inputs exist before they load torch, where Ctrl-C lands."""
    from PIL import Image

    (tmp_path / "data").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "data" / "a.png")
    (tmp_path / "data" / "metadata.jsonl").write_text('{"image": "a.png", "text": "a red circle"}\n')
    Image.new("RGB", (32, 32)).save(tmp_path / "c.png")
    (tmp_path / "canny").mkdir()  # its config says what binding reads before torch; the weights come later
    (tmp_path / "canny" / "tuner.safetensors").write_bytes(b"")
    (tmp_path / "canny" / "tuner_config.json").write_text(
        '{"format": "scedit-tuner", "method": "csc", "config": {"condition": "canny"}}')
    (tmp_path / "model.bin").write_bytes(b"")  # convert reads it with torch, after Ctrl-C
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nsource = "{base_model_path()}"\n[data]\nsource = "{tmp_path / "data"}"\n'
                      f'resolution = 32\n[method]\nname = "sc"\n[train]\noutput_dir = "{tmp_path / "run"}"\n')
    return recipe


# Commands that load torch (or pyarrow, cv2) first thing: Ctrl-C lands while they load, the case where
# typer's own handling used to exit 0 without a word.
LOADING = {
    "sample": (["sample", "-m", "{toy}", "-p", "a red circle", "-o", "{tmp}/out"], "libtorch", ["{tmp}/out", "again"]),
    "compose": (["compose", "-m", "{toy}", "-t", "{tmp}/canny", "-p", "x", "--control", "canny:{tmp}/c.png",
                 "-o", "{tmp}/out"], "libtorch", ["{tmp}/out", "again"]),
    "convert": (["convert", "{tmp}/model.bin", "--arch", "sd15", "-o", "{tmp}/tuner"], "libtorch",
                ["{tmp}/tuner", "again"]),
    "train": (["train", "{tmp}/r.toml"], "libtorch", ["outside the training loop", "--resume latest"]),
    "eval": (["eval", "--fid", "--generated", "{tmp}", "--reference", "{tmp}"], "libtorch", ["no result", "again"]),
    "bench params": (["bench", "params"], "libtorch", ["nothing was written", "again"]),
    "bench sampling": (["bench", "sampling"], "libtorch", ["nothing was written", "again"]),
    "bench table1": (["bench", "table1", "--out", "{tmp}/bench"], "libtorch", ["{tmp}/bench", "again"]),
    "prepare cache": (["prepare", "cache", "--recipe", "{tmp}/r.toml"], "libtorch", ["kept in the cache", "again"]),
    "analyze skips": (["analyze", "skips", "-p", "x", "--out", "{tmp}/analysis"], "libtorch",
                      ["{tmp}/analysis", "again"]),
    "prepare laion": (["prepare", "laion", "-i", "{tmp}/in.parquet", "-o", "{tmp}/out.parquet"], "libarrow",
                      ["{tmp}/out.parquet", "nothing was written"]),
}


@pytest.mark.parametrize("name", list(LOADING))
def test_ctrl_c_while_loading(name, tmp_path):
    args, library, words = LOADING[name]
    toy_inputs(tmp_path)
    fill = {"{toy}": str(base_model_path()), "{tmp}": str(tmp_path)}

    def sub(s: str) -> str:
        for k, v in fill.items():
            s = s.replace(k, v)
        return s

    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = interrupt([sub(a) for a in args], mapped(library))
    assert_one_line(code, err, *map(sub, words))
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written"


def test_ctrl_c_while_reading_the_input_of_prepare_style(tmp_path):
    fifo = tmp_path / "captions.jsonl"
    os.mkfifo(fifo)
    holder = []

    def reading(pid: int) -> bool:  # a writer can open a FIFO only once its reader has it open
        try:
            holder.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError:
            return False

    try:
        code, err = interrupt(["prepare", "style", "-i", str(fifo), "-o", str(tmp_path / "out.jsonl"), "-s", "anime"],
                              reading)
    finally:
        for fd in holder:
            os.close(fd)
    assert_one_line(code, err, str(tmp_path / "out.jsonl"), "nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.jsonl"]


def test_ctrl_c_in_quickstart_after_its_first_outputs(tmp_path):
    out = tmp_path / "qs"
    code, err = interrupt(["quickstart", "-o", str(out)], exists(out / ".scedit-quickstart"))
    assert_one_line(code, err, str(out), "again")


def test_ctrl_c_in_prepare_with_workers_keeps_finished_records_and_resumes(tmp_path):
    from scedit_cli.prepare.runner import PrepareConfig, run_prepare

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((512, 512, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG")
    n = 40
    for i in range(n):  # one picture under many names: each record is real work (decode, canny, PNG)
        (src / f"{i:03d}.jpg").write_bytes(buf.getvalue())
    out = tmp_path / "out"
    journal = out / ".scedit-prepare" / "journal-0-of-1.jsonl"

    def started(pid: int) -> bool:
        return journal.exists() and journal.read_text().count("\n") >= 2

    code, err = interrupt(["prepare", "-c", "canny", "-i", str(src), "-o", str(out), "--workers", "2"], started)
    assert_one_line(code, err, str(out), "run the same command again to resume")  # no worker tracebacks
    kept = journal.read_text().count("\n")
    assert 2 <= kept < n and not (out / "metadata.jsonl").exists()
    summary = run_prepare(PrepareConfig("canny", str(src), out, workers=2))
    assert summary.resumed == kept and summary.rows_out == n
    assert len((out / "metadata.jsonl").read_text().splitlines()) == n


def test_ctrl_c_twice_inside_prepare_threads_stops_between_chunks(tmp_path):
    """In-process: SIGINT arrives while the main thread drains the thread pool. It must become a flag checked
    between chunks (an exception raised inside concurrent.futures can leave a future's lock held and hang the
    pool's shutdown), a second Ctrl-C must not cut that short, and the journal keeps whole records."""
    import json
    import threading

    from scedit_cli.prepare.runner import PrepareConfig, run_prepare

    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        Image.fromarray(np.full((64, 64, 3), i * 5, np.uint8)).save(src / f"{i:03d}.png")
    out = tmp_path / "out"

    class CtrlCTwice:
        seen = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def add_task(self, *a, **k):
            return 0

        def advance(self, task_id):
            CtrlCTwice.seen += 1
            if CtrlCTwice.seen == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(PrepareConfig("canny", str(src), out, workers=2, pool="threads"), progress_factory=CtrlCTwice)
    assert signal.getsignal(signal.SIGINT) is handler
    assert not [t for t in threading.enumerate() if t.name.startswith("prepare")]  # the pool was shut down
    lines = (out / ".scedit-prepare" / "journal-0-of-1.jsonl").read_text().splitlines()
    assert 2 <= len(lines) < 40 and all(json.loads(line)["key"] for line in lines)
    assert not (out / "metadata.jsonl").exists()
    assert run_prepare(PrepareConfig("canny", str(src), out, workers=2)).rows_out == 40
