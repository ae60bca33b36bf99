"""Runs the quickstart's stages into one folder; see the package docstring."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..errors import SceditError
from ..fsutil import check_output_location, remove_paths, write_json_atomic, write_text_atomic
from .evaluate import add_color_maps, control_eval, write_grids
from .jobs import SECOND_JOBS, SECOND_LOG, SecondProcess, default_threads, sample_settings, style_scenes, train_recipe
from .report import render_markdown
from .settings import (COLOR_RATIO, CONDITIONS, CONTROL_CAPTION_POSITIONS, CONTROL_JITTER, MARKER, OWNED,
                       STAGES, QuickstartResult, QuickstartSettings, StageTime, cpu_seconds)


def prepare_output(out: Path) -> None:
    """Make `out` ready: new, empty, or an earlier quickstart's folder (whose outputs are replaced)."""
    check_output_location(out, "--output")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SceditError(
            f"--output {out}: folder is not empty and was not written by `scedit quickstart`; choose another --output"
        )
    out.mkdir(parents=True, exist_ok=True)
    remove_paths(out, OWNED)
    (out / MARKER).write_text("written by `scedit quickstart`; its outputs are replaced when it runs again\n")


# --- the run ---------------------------------------------------------------------------------------


class _Stages:
    """Runs named stages, timing each (wall + CPU) and naming the stage that failed."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.times: dict[str, StageTime] = {}

    def run(self, name: str, what: str, fn: Callable):
        k = STAGES.index(name) + 1
        self.say(f"[{k}/{len(STAGES)}] {name}: {what}")  # said as written (`console.info`): no markup
        t0, c0 = time.perf_counter(), cpu_seconds()
        try:
            value = fn()
        except SceditError as e:
            raise SceditError(f"quickstart stage '{name}' failed: {e}", exit_code=1) from e
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a bug or a broken install: say which stage, keep the cause for --debug
            raise SceditError(f"quickstart stage '{name}' failed: {type(e).__name__}: {e}", exit_code=1) from e
        self.times[name] = StageTime(time.perf_counter() - t0, cpu_seconds() - c0)
        t = self.times[name]
        self.say(f"    done in {t.wall_s:.1f} s (CPU {t.cpu_s:.1f} s)")
        return value


def run_quickstart(settings: QuickstartSettings | None = None, say: Callable[[str], None] | None = None
                   ) -> QuickstartResult:
    """Run every stage into `settings.output`; see the module docstring."""
    settings = settings or QuickstartSettings()
    settings.validate()  # before torch loads: a bad option is answered at once
    import torch

    from ..console import info

    say = say or info
    out = Path(settings.output).expanduser().resolve()
    prepare_output(out)
    old_threads = torch.get_num_threads()
    threads = settings.threads or default_threads()
    torch.set_num_threads(threads)
    t_start, c_start = time.perf_counter(), cpu_seconds()
    stages = _Stages(say)
    try:
        report = _run(settings, out, stages, threads)
    finally:
        torch.set_num_threads(old_threads)
    report["timing"] = {
        "wall_s": time.perf_counter() - t_start,
        "cpu_s": cpu_seconds() - c_start,
        "stages": {k: asdict(v) for k, v in stages.times.items()},
        "torch_threads": threads,
        "processes": 2,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    md = render_markdown(report)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", md)
    return QuickstartResult(out, out / "report.md", out / "report.json", report)


def _run(s: QuickstartSettings, out: Path, stages: _Stages, threads: int) -> dict:
    from ..toy import TRIGGER, ToyWorld, base_model_path, make_dataset, render

    base_path = base_model_path()
    world_style = ToyWorld()
    world_ctrl = ToyWorld(jitter=CONTROL_JITTER, caption_positions=CONTROL_CAPTION_POSITIONS)
    report: dict = {
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}},
        "base_model": str(base_path),
        "commands": {},
    }

    # 1. datasets and evaluation inputs ------------------------------------------------------------
    style_sc = style_scenes(s)
    ctrl_scenes = world_ctrl.scenes(s.n_eval, s.seed + 2000)

    def data():
        make_dataset(out / "data" / "style", s.n_train, seed=s.seed + 1, style=s.style, world=world_style,
                     trigger=TRIGGER, conditions=())
        make_dataset(out / "data" / "control", s.n_train, seed=s.seed + 2, world=world_ctrl, conditions=("canny",))
        add_color_maps(out / "data" / "control")
        ev = out / "eval"
        for sub in ("images", "canny", "color"):
            (ev / sub).mkdir(parents=True, exist_ok=True)
        from PIL import Image

        from ..conditions import compute_condition

        for i, sc in enumerate(ctrl_scenes):
            img = render(sc)
            img.save(ev / "images" / f"{i:02d}.png")
            compute_condition("canny", img).save(ev / "canny" / f"{i:02d}.png")
            compute_condition("color", img, params={"ratio": COLOR_RATIO}).save(ev / "color" / f"{i:02d}.png")
        lines = [json.dumps({"prompt": world_style.caption(sc, trigger=TRIGGER), "scene": sc.to_dict()})
                 for sc in style_sc]
        write_text_atomic(ev / "style_prompts.jsonl", "\n".join(lines) + "\n")
        lines = [json.dumps({"prompt": world_ctrl.caption(sc), "scene": sc.to_dict(),
                             "control_map": {c: f"{c}/{i:02d}.png" for c in CONDITIONS}})
                 for i, sc in enumerate(ctrl_scenes)]
        write_text_atomic(ev / "control_prompts.jsonl", "\n".join(lines) + "\n")
        del Image

    stages.run("data", f"toy datasets: {s.n_train} '{s.style}' images with <sce> captions, {s.n_train} with canny + "
                       f"colour maps; {s.n_eval} held-out prompts each", data)
    report["data"] = {"style": "data/style", "control": "data/control", "n_train": s.n_train, "style_name": s.style,
                      "control_jitter_px": CONTROL_JITTER, "color_ratio": COLOR_RATIO, "n_eval": s.n_eval}

    # 2-5. training, and the style evaluation, in two processes ------------------------------------------
    def train_all():
        second = SecondProcess(out, s, threads)
        try:
            canny = train_recipe("canny", out / "data" / "control", out, s)
            return canny, second.result()
        finally:
            second.stop()

    canny, second = stages.run(
        "train", f"CSC-Tuner for canny edges here; SC-Tuner on '{s.style}' (a style the base never saw), CSC-Tuner "
                 f"for colour maps, then {s.n_eval} <sce> prompts without / with the SC-Tuner in a second process "
                 f"({threads} torch thread(s) each; its log: {SECOND_LOG})", train_all)
    trained = {"style": second["training"]["style"], "canny": canny, "color": second["training"]["color"]}
    for name, r in trained.items():
        report["commands"][f"train_{name}"] = r.pop("command")
    report["training"] = trained
    report["style"] = second["style"]
    report["commands"].update(second["commands"])
    report["parallel"] = {"main": ["canny"], "second": [n for n, _ in SECOND_JOBS] + ["sample"],
                          "threads_per_process": threads, "second_sample": second["times"]["sample"]}

    from ..sampling import load_model

    base = load_model(str(base_path), device="cpu")
    ss = sample_settings(s)
    report["sampling"] = {"steps": s.sample_steps, "scheduler": "ddim", "guidance_scale": s.guidance_scale,
                          "seed": s.seed}

    # 6. controls and composition ---------------------------------------------------------------------
    tuners = {c: out / trained[c]["tuner"] for c in CONDITIONS}
    report["control"] = stages.run(
        "control", f"{s.n_eval} prompts: base, canny, colour, and compose sweeps (1,0) (.5,.5) (0,1)",
        lambda: control_eval(base, ctrl_scenes, tuners, out, ss, s, report["commands"]))

    stages.run("report", "grids, report.md, report.json", lambda: write_grids(out, report, s))
    return report
