"""`scedit quickstart`: the whole SCEdit story on the shipped toy base, offline, on a CPU.

Stages (each one the library function a CLI command wraps, no special paths):

1. data     `toy.make_dataset`: a style set (a style the base never saw, `<sce>`
            captions) and a control set (canny + colour maps, shapes jittered
            off the named position so the maps carry information the prompt
            does not);
2. style    `train()` on `assets/quickstart/style.toml` (SC-Tuner)  = `scedit train`;
3. canny    `train()` on `assets/quickstart/canny.toml` (CSC-Tuner) = `scedit train`;
4. color    `train()` on `assets/quickstart/color.toml` (CSC-Tuner) = `scedit train`;
5. sample   `sample()` before/after the SC-Tuner                    = `scedit sample`;
6. control  `sample()` with each CSC-Tuner and `compose()` with a
            3-step weight sweep (1,0) (.5,.5) (0,1)                  = `scedit sample` / `scedit compose`;
7. report   analytic toy scores (`toy.score`), `report.md` + `report.json`.

Scores are computed from the pixels (`scedit_cli.toy.score`): colour / shape /
position / background accuracy, the style score, edge F1 of the generated
image's canny edges against the condition, and the colour-map error. The style
score is also measured on the base VAE's reconstruction of real images of the
style (`vae_ceiling`): a U-Net-side tuner cannot draw what the VAE cannot decode.
"""

from __future__ import annotations

import json
import platform
import resource
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import SceditError
from .fsutil import atomic_path, check_output_location, remove_paths, write_json_atomic, write_text_atomic

STYLES = ("half", "outline", "striped")
CONDITIONS = ("canny", "color")
STAGES = ("data", "style", "canny", "color", "sample", "control", "report")
MARKER = ".scedit-quickstart"
OWNED = ("data", "runs", "samples", "eval", "grids", "report.md", "report.json")
COLOR_RATIO = 4  # 32 px / 4 = 8x8 colour cells, as 512 px / 64 on Stable Diffusion
CONTROL_JITTER = 3  # shapes move up to 3 px off the named position in the control set
# Control captions leave the position out: only the condition map says where the shape is.
CONTROL_CAPTION_POSITIONS = False
N_TRAIN = 256


def recipe_path(name: str) -> Path:
    """A quickstart recipe shipped inside the package (`style`, `canny`, `color`)."""
    from importlib.resources import files

    return Path(str(files("scedit_cli") / "assets" / "quickstart" / f"{name}.toml"))


@dataclass
class QuickstartSettings:
    """output: the folder everything goes to; steps_scale multiplies every recipe's max_steps."""

    output: Path = Path("scedit-quickstart")
    steps_scale: float = 1.0
    seed: int = 0
    style: str = "half"
    n_eval: int = 16
    sample_steps: int = 25
    guidance_scale: float = 4.0
    threads: int | None = None

    def validate(self) -> None:
        if not (self.steps_scale > 0) or not np.isfinite(self.steps_scale):
            raise SceditError(f"--steps-scale must be a number > 0, got {self.steps_scale}")
        if self.seed < 0:
            raise SceditError(f"--seed must be >= 0, got {self.seed}")
        if self.style not in STYLES:
            raise SceditError(f"--style {self.style!r}: choose one of {', '.join(STYLES)} (styles the base never saw)")
        if self.n_eval < 1:
            raise SceditError(f"--n-eval must be >= 1, got {self.n_eval}")
        if self.sample_steps < 1:
            raise SceditError(f"--sample-steps must be >= 1, got {self.sample_steps}")
        if self.threads is not None and self.threads < 1:
            raise SceditError(f"--threads must be >= 1, got {self.threads}")


@dataclass
class StageTime:
    wall_s: float
    cpu_s: float


@dataclass
class QuickstartResult:
    output: Path
    report_md: Path
    report_json: Path
    report: dict = field(default_factory=dict)


# --- helpers ---------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers), user + system."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


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


def _steps(name: str, scale: float) -> int:
    from .recipes import load_recipe

    return max(1, round(load_recipe(recipe_path(name)).train.max_steps * scale))


def add_color_maps(folder: Path, ratio: int = COLOR_RATIO) -> None:
    """Write `color/<name>.png` for every image of a toy dataset and add the `color` column (atomically)."""
    from PIL import Image

    from .conditions import compute_condition
    from .toy import read_metadata

    rows = read_metadata(folder)
    (folder / "color").mkdir(exist_ok=True)
    for row in rows:
        name = Path(row["image"]).name
        with Image.open(folder / row["image"]) as im:
            cmap = compute_condition("color", im.convert("RGB"), params={"ratio": ratio})
        with atomic_path(folder / "color" / name) as tmp:
            cmap.save(tmp, format="PNG")
        row["color"] = f"color/{name}"
    write_text_atomic(folder / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _edges(img: np.ndarray) -> np.ndarray:
    from .toy import canny

    return canny(img)


def _color_map(img: np.ndarray) -> np.ndarray:
    from .conditions.color import color_array

    return color_array(img, COLOR_RATIO)


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def _rel(p: Path | str | None, root: Path) -> str | None:
    if p is None:
        return None
    try:
        return str(Path(p).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def vae_ceiling(base, scenes, style: str) -> float:
    """Mean style score of real images of `style` after a round trip through the base VAE (encode -> decode).

    The most a U-Net-side tuner can reach: it can only produce latents, and this is how the VAE draws them.
    """
    import torch

    from .toy import render, style_score

    vae = base.vae
    x = np.stack([np.asarray(render(s, style=style)) for s in scenes]).astype(np.float32) / 127.5 - 1.0
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2).to(device=vae.device, dtype=vae.dtype)
        y = vae.decode(vae.encode(t).latent_dist.mean).sample
    imgs = ((y.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return _mean([style_score(im, s.with_style(style)) for im, s in zip(imgs, scenes)])


# --- the run ---------------------------------------------------------------------------------------


class _Stages:
    """Runs named stages, timing each (wall + CPU) and naming the stage that failed."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.times: dict[str, StageTime] = {}

    def run(self, name: str, what: str, fn: Callable):
        k = STAGES.index(name) + 1
        self.say(f"[bold][{k}/{len(STAGES)}] {name}[/bold]: {what}")
        t0, c0 = time.perf_counter(), _cpu_seconds()
        try:
            value = fn()
        except SceditError as e:
            raise SceditError(f"quickstart stage '{name}' failed: {e}", exit_code=1) from e
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a bug or a broken install: say which stage, keep the cause for --debug
            raise SceditError(f"quickstart stage '{name}' failed: {type(e).__name__}: {e}", exit_code=1) from e
        self.times[name] = StageTime(time.perf_counter() - t0, _cpu_seconds() - c0)
        t = self.times[name]
        self.say(f"    done in {t.wall_s:.1f} s (CPU {t.cpu_s:.1f} s)")
        return value


def run_quickstart(settings: QuickstartSettings | None = None, say: Callable[[str], None] | None = None
                   ) -> QuickstartResult:
    """Run every stage into `settings.output`; see the module docstring."""
    import torch

    from .console import info

    settings = settings or QuickstartSettings()
    settings.validate()
    say = say or info
    out = Path(settings.output).expanduser().resolve()
    prepare_output(out)
    old_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    t_start, c_start = time.perf_counter(), _cpu_seconds()
    stages = _Stages(say)
    try:
        report = _run(settings, out, stages, say)
    finally:
        torch.set_num_threads(old_threads)
    report["timing"] = {
        "wall_s": time.perf_counter() - t_start,
        "cpu_s": _cpu_seconds() - c_start,
        "stages": {k: asdict(v) for k, v in stages.times.items()},
        "torch_threads": settings.threads or old_threads,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
    }
    md = render_markdown(report)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", md)
    return QuickstartResult(out, out / "report.md", out / "report.json", report)


def _run(s: QuickstartSettings, out: Path, stages: _Stages, say) -> dict:
    from .toy import TRIGGER, ToyWorld, base_model_path, make_dataset, render

    base_path = base_model_path()
    world_style = ToyWorld()
    world_ctrl = ToyWorld(jitter=CONTROL_JITTER, caption_positions=CONTROL_CAPTION_POSITIONS)
    report: dict = {
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}},
        "base_model": str(base_path),
        "commands": {},
    }

    # 1. datasets and evaluation inputs ------------------------------------------------------------
    style_scenes = world_style.scenes(s.n_eval, s.seed + 1000, s.style)
    ctrl_scenes = world_ctrl.scenes(s.n_eval, s.seed + 2000)

    def data():
        make_dataset(out / "data" / "style", N_TRAIN, seed=s.seed + 1, style=s.style, world=world_style,
                     trigger=TRIGGER, conditions=())
        make_dataset(out / "data" / "control", N_TRAIN, seed=s.seed + 2, world=world_ctrl, conditions=("canny",))
        add_color_maps(out / "data" / "control")
        ev = out / "eval"
        for sub in ("images", "canny", "color"):
            (ev / sub).mkdir(parents=True, exist_ok=True)
        from PIL import Image

        from .conditions import compute_condition

        for i, sc in enumerate(ctrl_scenes):
            img = render(sc)
            img.save(ev / "images" / f"{i:02d}.png")
            compute_condition("canny", img).save(ev / "canny" / f"{i:02d}.png")
            compute_condition("color", img, params={"ratio": COLOR_RATIO}).save(ev / "color" / f"{i:02d}.png")
        lines = [json.dumps({"prompt": world_style.caption(sc, trigger=TRIGGER), "scene": sc.to_dict()})
                 for sc in style_scenes]
        write_text_atomic(ev / "style_prompts.jsonl", "\n".join(lines) + "\n")
        lines = [json.dumps({"prompt": world_ctrl.caption(sc), "scene": sc.to_dict()}) for sc in ctrl_scenes]
        write_text_atomic(ev / "control_prompts.jsonl", "\n".join(lines) + "\n")
        del Image

    stages.run("data", f"toy datasets: {N_TRAIN} '{s.style}' images with <sce> captions, {N_TRAIN} with canny + "
                       f"colour maps; {s.n_eval} held-out prompts each", data)
    report["data"] = {"style": "data/style", "control": "data/control", "n_train": N_TRAIN, "style_name": s.style,
                      "control_jitter_px": CONTROL_JITTER, "color_ratio": COLOR_RATIO, "n_eval": s.n_eval}

    # 2-4. training ----------------------------------------------------------------------------------
    trained: dict[str, dict] = {}
    for name, data_dir, what in (
        ("style", "style", f"SC-Tuner on '{s.style}' (the base has never seen it)"),
        ("canny", "control", "CSC-Tuner for canny edges"),
        ("color", "control", "CSC-Tuner for colour maps"),
    ):
        trained[name] = stages.run(name, what, lambda n=name, d=data_dir: _train(n, out / "data" / d, out, s))
        report["commands"][f"train_{name}"] = trained[name].pop("command")
    report["training"] = trained

    # 5. style before / after -------------------------------------------------------------------------
    from .sampling import SampleSettings, load_model

    base = load_model(str(base_path), device="cpu")
    ss = SampleSettings(steps=s.sample_steps, guidance_scale=s.guidance_scale, seeds=(s.seed,),
                        batch_size=min(16, s.n_eval), grid_max=64)
    report["sampling"] = {"steps": s.sample_steps, "scheduler": "ddim", "guidance_scale": s.guidance_scale,
                          "seed": s.seed}
    style_tuner = out / trained["style"]["tuner"]
    report["style"] = stages.run(
        "sample", f"{s.n_eval} <sce> prompts without and with the SC-Tuner",
        lambda: _style_eval(base, style_scenes, style_tuner, out, ss, s, report["commands"]))

    # 6. controls and composition ---------------------------------------------------------------------
    tuners = {c: out / trained[c]["tuner"] for c in CONDITIONS}
    report["control"] = stages.run(
        "control", f"{s.n_eval} prompts: base, canny, colour, and compose sweeps (1,0) (.5,.5) (0,1)",
        lambda: _control_eval(base, ctrl_scenes, tuners, out, ss, s, report["commands"]))

    stages.run("report", "grids, report.md, report.json", lambda: _grids(out, report, s))
    return report


def _train(name: str, data_dir: Path, out: Path, s: QuickstartSettings) -> dict:
    from .training.loop import train

    steps = _steps(name, s.steps_scale)
    overrides = {"data.source": str(data_dir), "train.output_dir": str(out / "runs" / name),
                 "train.max_steps": steps, "train.seed": s.seed}
    t0, c0 = time.perf_counter(), _cpu_seconds()
    res = train(recipe_path(name), overrides=overrides)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    if res.interrupted or not res.outputs:
        raise SceditError(f"training '{name}' stopped at step {res.steps} without saving a tuner")
    losses = [v for _, v in res.losses if v == v]
    k = max(1, len(losses) // 10)
    cmd = ["scedit", "train", str(recipe_path(name))] + [f"--set {k_}={v}" for k_, v in overrides.items()]
    return {
        "recipe": str(recipe_path(name)),
        "steps": res.steps,
        "tuner": _rel(res.outputs[0], out),
        "loss_curve": _rel(res.loss_curve, out),
        "loss_first10pct": _mean(losses[:k]),
        "loss_last10pct": _mean(losses[-k:]),
        "wall_s": wall,
        "cpu_s": cpu,
        "s_per_step": wall / max(1, res.steps),
        "command": " ".join(shlex.quote(c) if not c.startswith("--set ") else c for c in cmd),
    }


def _images(paths) -> list[np.ndarray]:
    return [_load_rgb(Path(p)) for p in paths]


def _style_eval(base, scenes, tuner: Path, out: Path, ss, s: QuickstartSettings, commands: dict) -> dict:
    from .sampling import sample
    from .toy import TRIGGER, ToyWorld, score_images

    world = ToyWorld()
    prompts = [world.caption(sc, trigger=TRIGGER) for sc in scenes]
    res = {}
    for name, tuners in (("before", []), ("after", [tuner])):
        r = sample(base, prompts, out / "samples" / "style" / name, tuners=tuners, settings=ss)
        scores = score_images(_images(r.images), scenes)
        res[name] = {k: v for k, v in scores.items() if k != "n"}
        res[name]["grid"] = _rel(r.grid, out)
    res["n"] = len(scenes)
    res["style"] = s.style
    res["vae_ceiling"] = vae_ceiling(base, scenes, s.style)
    prompts_file = out / "eval" / "style_prompts.jsonl"
    commands["sample_style_after"] = (
        f"scedit sample --model {shlex.quote(str(base.source))} --prompts {shlex.quote(str(prompts_file))} "
        f"--tuner {shlex.quote(str(tuner))} --steps {ss.steps} --guidance-scale {ss.guidance_scale} "
        f"--seed {s.seed} --out {shlex.quote(str(out / 'samples' / 'style' / 'after'))}")
    return res


def _control_eval(base, scenes, tuners: dict[str, Path], out: Path, ss, s: QuickstartSettings,
                  commands: dict) -> dict:
    from dataclasses import replace

    from .sampling import ControlSpec, PromptSpec, compose, load_tuners, sample
    from .toy import ToyWorld, edge_f1, score_images
    from .metrics.control_maps import color_error

    world = ToyWorld(jitter=CONTROL_JITTER, caption_positions=CONTROL_CAPTION_POSITIONS)
    ev = out / "eval"
    prompts = [world.caption(sc) for sc in scenes]
    loaded = dict(zip(CONDITIONS, load_tuners([tuners[c] for c in CONDITIONS], base)))
    one = replace(ss, grid_max=0, batch_size=1)
    paths: dict[str, list[Path]] = {"base": [], "canny": [], "color": [], "compose_1_0": [], "compose_mid": [],
                                    "compose_0_1": []}
    r = sample(base, prompts, out / "samples" / "control" / "base", settings=ss)
    paths["base"] = list(r.images)
    for i, prompt in enumerate(prompts):
        spec = [PromptSpec(i, prompt)]
        maps = {c: ControlSpec(c, ev / c / f"{i:02d}.png", 1.0, is_map=True) for c in CONDITIONS}
        for c in CONDITIONS:
            r = sample(base, spec, out / "samples" / "control" / c / f"{i:02d}", tuners=[loaded[c]],
                       controls=[maps[c]], settings=one)
            paths[c].append(r.images[0])
        r = compose(base, spec, out / "samples" / "control" / "compose" / f"{i:02d}",
                    tuners=[loaded["canny"], loaded["color"]], controls=[maps["canny"], maps["color"]],
                    settings=one, sweep=3)
        paths["compose_1_0"].append(r.images[0])
        paths["compose_mid"].append(r.images[1])
        paths["compose_0_1"].append(r.images[2])
    i0 = 0
    commands["sample_canny"] = (
        f"scedit sample --model {shlex.quote(str(base.source))} --prompt {shlex.quote(prompts[i0])} "
        f"--tuner {shlex.quote(str(tuners['canny']))} --control-map canny:{shlex.quote(str(ev / 'canny' / '00.png'))} "
        f"--steps {ss.steps} --guidance-scale {ss.guidance_scale} --seed {s.seed} --out samples/canny-00")
    commands["compose_sweep"] = (
        f"scedit compose --model {shlex.quote(str(base.source))} --prompt {shlex.quote(prompts[i0])} "
        f"--tuner {shlex.quote(str(tuners['canny']))} --tuner {shlex.quote(str(tuners['color']))} "
        f"--control-map canny:{shlex.quote(str(ev / 'canny' / '00.png'))} "
        f"--control-map color:{shlex.quote(str(ev / 'color' / '00.png'))} --sweep 3 "
        f"--steps {ss.steps} --guidance-scale {ss.guidance_scale} --seed {s.seed} --out samples/compose-00")

    cond_edges = [_load_rgb(ev / "canny" / f"{i:02d}.png")[..., 0] > 127 for i in range(len(scenes))]
    cond_colors = [_load_rgb(ev / "color" / f"{i:02d}.png") for i in range(len(scenes))]
    res: dict = {"n": len(scenes)}
    imgs = {k: _images(v) for k, v in paths.items()}
    for k, ims in imgs.items():
        acc = score_images(ims, scenes)
        res[k] = {
            "edge_f1": _mean([edge_f1(_edges(im), e) for im, e in zip(ims, cond_edges)]),
            "color_error": _mean([color_error(c, _color_map(im)) for im, c in zip(ims, cond_colors)]),
            **{m: acc[m] for m in ("colour", "shape", "position", "background", "iou", "all")},
        }
    res["compose_identity"] = {
        "weights_1_0_vs_canny_max_abs_diff": int(max(np.abs(a.astype(int) - b.astype(int)).max()
                                                     for a, b in zip(imgs["compose_1_0"], imgs["canny"]))),
        "weights_0_1_vs_color_max_abs_diff": int(max(np.abs(a.astype(int) - b.astype(int)).max()
                                                     for a, b in zip(imgs["compose_0_1"], imgs["color"]))),
    }
    res["paths"] = {k: [_rel(p, out) for p in v] for k, v in paths.items()}
    return res


def _grids(out: Path, report: dict, s: QuickstartSettings) -> None:
    """One contact sheet per comparison (rows: condition maps, base, tuned), and the loss-curve list."""
    from PIL import Image

    from .sampling.grid import contact_sheet

    (out / "grids").mkdir(exist_ok=True)
    n = min(8, report["control"]["n"])
    ev = out / "eval"
    ctrl = report["control"]["paths"]
    rows = [
        ("reference image", [ev / "images" / f"{i:02d}.png" for i in range(n)]),
        ("canny map", [ev / "canny" / f"{i:02d}.png" for i in range(n)]),
        ("colour map", [ev / "color" / f"{i:02d}.png" for i in range(n)]),
        ("base, no control", [out / p for p in ctrl["base"][:n]]),
        ("canny CSC", [out / p for p in ctrl["canny"][:n]]),
        ("colour CSC", [out / p for p in ctrl["color"][:n]]),
        ("compose (.5, .5)", [out / p for p in ctrl["compose_mid"][:n]]),
    ]
    _sheet([p for _, ps in rows for p in ps], n, out / "grids" / "control.png", contact_sheet, Image)
    report["grids"] = {"control": "grids/control.png", "control_rows": [r for r, _ in rows]}
    st = out / "samples" / "style"
    srows = [("real images of the style", None), ("base", sorted((st / "before").glob("0*.png"))[:n]),
             ("SC-Tuner", sorted((st / "after").glob("0*.png"))[:n])]
    from .toy import ToyWorld, render

    scenes = ToyWorld().scenes(s.n_eval, s.seed + 1000, s.style)[:n]
    real = out / "grids" / "style-real"
    real.mkdir(exist_ok=True)
    for i, sc in enumerate(scenes):
        render(sc).save(real / f"{i:02d}.png")
    srows[0] = ("real images of the style", sorted(real.glob("*.png")))
    _sheet([p for _, ps in srows for p in ps], n, out / "grids" / "style.png", contact_sheet, Image)
    shutil.rmtree(real)
    report["grids"]["style"] = "grids/style.png"
    report["grids"]["style_rows"] = [r for r, _ in srows]


def _sheet(paths, cols, dest: Path, contact_sheet, Image) -> None:
    ims = []
    for p in paths:
        with Image.open(p) as im:
            ims.append(im.convert("RGB").resize((96, 96), Image.NEAREST))
    sheet = contact_sheet(ims, cols=cols, cell=96)
    with atomic_path(dest) as tmp:
        sheet.save(tmp, format="PNG")


# --- the report ------------------------------------------------------------------------------------


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    """(score, before, after) rows for the final table."""
    st, c = report["style"], report["control"]
    f = "{:.2f}".format
    return [
        (f"style score '{st['style']}' (<sce> prompts; VAE ceiling {f(st['vae_ceiling'])})",
         f(st["before"]["style"]), f(st["after"]["style"])),
        ("colour accuracy (<sce> prompts)", f(st["before"]["colour"]), f(st["after"]["colour"])),
        ("shape / position accuracy (<sce> prompts)",
         f"{f(st['before']['shape'])} / {f(st['before']['position'])}",
         f"{f(st['after']['shape'])} / {f(st['after']['position'])}"),
        ("edge F1 vs canny map (base -> canny CSC)", f(c["base"]["edge_f1"]), f(c["canny"]["edge_f1"])),
        ("colour-map error (base -> colour CSC)", f(c["base"]["color_error"]), f(c["color"]["color_error"])),
        ("compose (.5,.5): edge F1 / colour error", f"{f(c['base']['edge_f1'])} / {f(c['base']['color_error'])}",
         f"{f(c['compose_mid']['edge_f1'])} / {f(c['compose_mid']['color_error'])}"),
        ("compose (1,0) = canny, (0,1) = colour: max pixel diff", "-",
         f"{c['compose_identity']['weights_1_0_vs_canny_max_abs_diff']} / "
         f"{c['compose_identity']['weights_0_1_vs_color_max_abs_diff']}"),
    ]


CLEAR_GAIN = 0.05  # a score change below this on 16 prompts is reported as no clear change


def _change(before: float, after: float, higher_is_better: bool = True, clear: float = CLEAR_GAIN) -> str:
    d = (after - before) if higher_is_better else (before - after)
    if d >= clear:
        return f"improved ({before:.3f} -> {after:.3f})"
    if d <= -clear:
        return f"got worse ({before:.3f} -> {after:.3f})"
    return f"did not change clearly ({before:.3f} -> {after:.3f}, within {clear:.3g})"


def _style_notes(st: dict) -> list[str]:
    b, a = st["before"], st["after"]
    notes = [f"Measured here: the SC-Tuner's style score {_change(b['style'], a['style'])}; colour accuracy "
             f"{b['colour']:.3f} -> {a['colour']:.3f}."]
    if st["style"] == "half":
        notes += ["", "Shape accuracy is read by fitting filled circle / square / triangle templates; the upper half "
                  "of a shape often fits another one (real `half` images read right 0.69 of the time), so a lower "
                  "shape accuracy after the SC-Tuner is the style, not lost content."]
    return notes


def _control_notes(c: dict) -> list[str]:
    b = c["base"]
    return [f"Measured here (the control prompts do not name the position: only the map says where the shape "
            f"is): with the canny CSC-Tuner the edge F1 {_change(b['edge_f1'], c['canny']['edge_f1'])} and the "
            f"position accuracy {_change(b['position'], c['canny']['position'])}; with the colour CSC-Tuner the "
            f"edge F1 {_change(b['edge_f1'], c['color']['edge_f1'])}, the position accuracy "
            f"{_change(b['position'], c['color']['position'])} and the colour-map error "
            f"{_change(b['color_error'], c['color']['color_error'], False, 0.25 * b['color_error'])}, over the "
            "base without control."]


def render_markdown(report: dict) -> str:
    st, c, tr, tm = report["style"], report["control"], report["training"], report["timing"]
    f = "{:.3f}".format
    lines = [
        "# scedit quickstart report",
        "",
        f"Toy Stable Diffusion (32 px, `{report['base_model']}`), CPU, torch threads {tm['torch_threads']}, "
        f"{tm['machine']}. Total wall {tm['wall_s']:.0f} s, CPU {tm['cpu_s']:.0f} s.",
        "",
        "## Summary (before -> after)",
        "",
        "| score | before | after |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {cc} |" for a, b, cc in summary_rows(report)],
        "",
        "## 1. A new style with an SC-Tuner",
        "",
        f"{st['n']} held-out prompts with the `<sce>` trigger, DDIM {report['sampling']['steps']} steps, "
        f"guidance {report['sampling']['guidance_scale']}, seed {report['sampling']['seed']}. Rows: "
        + ", ".join(report["grids"]["style_rows"]) + ".",
        "",
        "![style](grids/style.png)",
        "",
        "| | style | colour | shape | position | background | all four right |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in ("before", "after"):
        r = st[k]
        lines.append(f"| {k} | {f(r['style'])} | {f(r['colour'])} | {f(r['shape'])} | {f(r['position'])} | "
                     f"{f(r['background'])} | {f(r['all'])} |")
    lines += [
        "",
        f"VAE ceiling: real '{st['style']}' images encoded and decoded by the base VAE score "
        f"{f(st['vae_ceiling'])} on the style score (1.0 before the round trip). The SC-Tuner only changes "
        "the latents the U-Net produces, so it cannot score above what the VAE can decode.",
        "",
        *_style_notes(st),
        "",
        "## 2. Controls with CSC-Tuners, and composing them",
        "",
        f"{c['n']} held-out prompts whose shapes sit up to {report['data']['control_jitter_px']} px off the "
        "named position; the maps come from the real image. Edge F1: Canny edges of the generated image against "
        "the canny map, 1 px tolerance. Colour error: mean absolute difference (0..1) of the colour maps. Rows: "
        + ", ".join(report["grids"]["control_rows"]) + ".",
        "",
        "![control](grids/control.png)",
        "",
        "| images | edge F1 | colour error | colour | shape | position | all four right |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"base": "base, no control", "canny": "canny CSC", "color": "colour CSC",
             "compose_1_0": "compose (1, 0)", "compose_mid": "compose (.5, .5)", "compose_0_1": "compose (0, 1)"}
    for k, label in names.items():
        r = c[k]
        lines.append(f"| {label} | {f(r['edge_f1'])} | {f(r['color_error'])} | {f(r['colour'])} | {f(r['shape'])} | "
                     f"{f(r['position'])} | {f(r['all'])} |")
    lines += ["", *_control_notes(c)]
    ci = c["compose_identity"]
    lines += [
        "",
        f"Compose with weights (1, 0) vs the canny tuner alone: largest pixel difference "
        f"{ci['weights_1_0_vs_canny_max_abs_diff']}; (0, 1) vs the colour tuner alone: "
        f"{ci['weights_0_1_vs_color_max_abs_diff']} (0 = identical images).",
        "",
        "## 3. Training",
        "",
        "| run | recipe | steps | s/step | wall s | CPU s | loss first 10% | loss last 10% | curve |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, r in tr.items():
        lines.append(f"| {k} | `{Path(r['recipe']).name}` | {r['steps']} | {r['s_per_step']:.2f} | {r['wall_s']:.0f} | "
                     f"{r['cpu_s']:.0f} | {f(r['loss_first10pct'])} | {f(r['loss_last10pct'])} | "
                     f"[{r['loss_curve']}]({r['loss_curve']}) |")
    lines += ["", *[f"![{k} loss]({r['loss_curve']})" for k, r in tr.items() if r.get("loss_curve")], ""]
    lines += ["## 4. The same steps as commands", "", "```bash"]
    lines += [v for v in report["commands"].values()]
    lines += ["```", "", "## Timing", "", "| stage | wall s | CPU s |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['wall_s']:.1f} | {v['cpu_s']:.1f} |" for k, v in tm["stages"].items()]
    lines += [f"| total | {tm['wall_s']:.1f} | {tm['cpu_s']:.1f} |", ""]
    return "\n".join(lines)
