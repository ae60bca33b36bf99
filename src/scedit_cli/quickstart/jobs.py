"""The quickstart's jobs, and the second process that runs some of them beside the main one.

The three trainings and the style evaluation are independent: the main process trains the canny
CSC-Tuner (the longest run) while a second process trains the SC-Tuner and the colour CSC-Tuner and then
samples the style before / after. Each process uses `threads` torch threads (half the CPUs by default), so
on a 2-core machine the trainings take the wall time of the longest one instead of their sum. Every job
is the same library call in either process, so the results do not depend on which process ran it.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from ..errors import SceditError
from .settings import QuickstartSettings, cpu_seconds, mean, recipe_path, rel

SECOND_LOG = "runs/second-process.log"  # the second process's progress output (relative to the output)
SECOND_JOBS = (("style", "style"), ("color", "control"))  # (recipe, dataset) trained in the second process


def default_threads() -> int:
    """torch threads per process: the CPUs shared by the two processes."""
    return max(1, (os.cpu_count() or 1) // 2)


def recipe_steps(name: str, scale: float) -> int:
    from ..recipes import load_recipe

    return max(1, round(load_recipe(recipe_path(name)).train.max_steps * scale))


def train_recipe(name: str, data_dir: Path, out: Path, s: QuickstartSettings) -> dict:
    """`scedit train` on the shipped recipe `name` (steps scaled, seed set); what the report says of it."""
    from ..training.loop import train

    steps = recipe_steps(name, s.steps_scale)
    overrides = {"data.source": str(data_dir), "train.output_dir": str(out / "runs" / name),
                 "train.max_steps": steps, "train.seed": s.seed}
    t0, c0 = time.perf_counter(), cpu_seconds()
    res = train(recipe_path(name), overrides=overrides)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if res.interrupted or not res.outputs:
        raise SceditError(f"training '{name}' stopped at step {res.steps} without saving a tuner")
    losses = [v for _, v in res.losses if v == v]
    k = max(1, len(losses) // 10)
    cmd = ["scedit", "train", str(recipe_path(name))] + [f"--set {k_}={v}" for k_, v in overrides.items()]
    return {
        "recipe": str(recipe_path(name)),
        "steps": res.steps,
        "tuner": rel(res.outputs[0], out),
        "loss_curve": rel(res.loss_curve, out),
        "loss_first10pct": mean(losses[:k]),
        "loss_last10pct": mean(losses[-k:]),
        "wall_s": wall,
        "cpu_s": cpu,
        "s_per_step": wall / max(1, res.steps),
        "command": " ".join(shlex.quote(c) if not c.startswith("--set ") else c for c in cmd),
    }


def sample_settings(s: QuickstartSettings):
    from ..sampling import SampleSettings

    return SampleSettings(steps=s.sample_steps, guidance_scale=s.guidance_scale, seeds=(s.seed,),
                          batch_size=min(16, s.n_eval), grid_max=64)


def style_scenes(s: QuickstartSettings):
    from ..toy import ToyWorld

    return ToyWorld().scenes(s.n_eval, s.seed + 1000, s.style)


def style_job(out: Path, s: QuickstartSettings, tuner: Path) -> tuple[dict, dict]:
    """Sample the <sce> prompts without and with the SC-Tuner; (scores, commands)."""
    from ..sampling import load_model
    from ..toy import base_model_path
    from .evaluate import style_eval

    commands: dict = {}
    base = load_model(str(base_model_path()), device="cpu")
    return style_eval(base, style_scenes(s), tuner, out, sample_settings(s), s, commands), commands


def second_jobs(out: Path, s: QuickstartSettings) -> dict:
    """What the second process does: train style and colour, then evaluate the style; each job timed."""
    res: dict = {"training": {}, "times": {}}
    for name, data in SECOND_JOBS:
        res["training"][name] = train_recipe(name, out / "data" / data, out, s)
    t0, c0 = time.perf_counter(), cpu_seconds()
    res["style"], res["commands"] = style_job(out, s, out / res["training"]["style"]["tuner"])
    res["times"]["sample"] = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}
    return res


def _exit_with(parent: int) -> None:
    """End this process when its parent is gone (killed without the chance to stop it)."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _second_main(conn, out: str, settings: dict, threads: int, parent: int) -> None:
    """Entry point of the second process: its output goes to SECOND_LOG, its result (or error) to `conn`."""
    _exit_with(parent)
    fd = os.open(Path(out) / SECOND_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import torch

    torch.set_num_threads(threads)
    try:
        s = QuickstartSettings(**{**settings, "output": Path(settings["output"])})
        conn.send(("ok", second_jobs(Path(out), s)))
    except SceditError as e:
        conn.send(("error", str(e)))
    except BaseException as e:  # noqa: BLE001 - reported by the main process, with the log to read
        import traceback

        traceback.print_exc()
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


class SecondProcess:
    """`second_jobs` in a fresh (spawned) process; `result()` waits for it and raises its error."""

    def __init__(self, out: Path, s: QuickstartSettings, threads: int):
        import multiprocessing as mp
        from dataclasses import asdict

        (out / SECOND_LOG).parent.mkdir(parents=True, exist_ok=True)
        self.log = out / SECOND_LOG
        ctx = mp.get_context("spawn")  # a fork would copy torch's thread pools and locks mid-use
        self._conn, child = ctx.Pipe(duplex=False)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}
        self._proc = ctx.Process(target=_second_main, args=(child, str(out), settings, threads, os.getpid()),
                                 daemon=True, name="scedit-quickstart-second")
        self._proc.start()
        child.close()

    def result(self) -> dict:
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._proc.join()
            raise SceditError(f"the second quickstart process ended (exit code {self._proc.exitcode}) without a "
                              f"result; its output is in {self.log}") from None
        self._proc.join()
        if status != "ok":
            raise SceditError(f"{value} (second process; its output is in {self.log})")
        return value

    def stop(self) -> None:
        """End the process if it still runs (the main process failed or was interrupted)."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._conn.close()
