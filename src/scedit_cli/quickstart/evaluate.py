"""The quickstart's evaluation: samples before / after, with each control, composed; scored from pixels."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np

from ..fsutil import atomic_path, write_text_atomic
from .settings import COLOR_RATIO, CONDITIONS, QuickstartSettings, load_images, load_rgb, mean, rel


def add_color_maps(folder: Path, ratio: int = COLOR_RATIO) -> None:
    """Write `color/<name>.png` for every image of a toy dataset and add the `color` column (atomically)."""
    from PIL import Image

    from ..conditions import compute_condition
    from ..toy import read_metadata

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


def _edges(img: np.ndarray) -> np.ndarray:
    from ..toy import canny

    return canny(img)


def _color_map(img: np.ndarray) -> np.ndarray:
    from ..conditions.color import color_array

    return color_array(img, COLOR_RATIO)


def vae_ceiling(base, scenes, style: str) -> float:
    """Mean style score of real images of `style` after a round trip through the base VAE (encode -> decode).

    The most a U-Net-side tuner can reach: it can only produce latents, and this is how the VAE draws them.
    """
    import torch

    from ..toy import render, style_score

    vae = base.vae
    x = np.stack([np.asarray(render(s, style=style)) for s in scenes]).astype(np.float32) / 127.5 - 1.0
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2).to(device=vae.device, dtype=vae.dtype)
        y = vae.decode(vae.encode(t).latent_dist.mean).sample
    imgs = ((y.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return mean([style_score(im, s.with_style(style)) for im, s in zip(imgs, scenes)])


def style_eval(base, scenes, tuner: Path, out: Path, ss, s: QuickstartSettings, commands: dict) -> dict:
    from ..sampling import sample
    from ..toy import TRIGGER, ToyWorld, render, score_images

    world = ToyWorld()
    prompts = [world.caption(sc, trigger=TRIGGER) for sc in scenes]
    res = {}
    for name, tuners in (("before", []), ("after", [tuner])):
        r = sample(base, prompts, out / "samples" / "style" / name, tuners=tuners, settings=ss)
        scores = score_images(load_images(r.images), scenes)
        res[name] = {k: v for k, v in scores.items() if k != "n"}
        res[name]["grid"] = rel(r.grid, out)
    res["n"] = len(scenes)
    res["style"] = s.style
    res["vae_ceiling"] = vae_ceiling(base, scenes, s.style)
    # How often the shape reader names the shape of the real renders of these scenes (for `half`, well below 1).
    res["real_shape"] = score_images([render(sc) for sc in scenes], scenes)["shape"]
    prompts_file = out / "eval" / "style_prompts.jsonl"
    commands["sample_style_after"] = (
        f"scedit sample --model {shlex.quote(str(base.source))} --prompts {shlex.quote(str(prompts_file))} "
        f"--tuner {shlex.quote(str(tuner))} {_sampling_options(ss, s)} "
        f"--out {shlex.quote(str(out / 'samples' / 'style' / 'after'))}")
    return res


def _sampling_options(ss, s: QuickstartSettings) -> str:
    """The options of the quickstart's sampling settings as the recorded `scedit sample` / `compose` commands
    give them, so that those commands make the same images."""
    return f"--steps {ss.steps} --guidance-scale {ss.guidance_scale} --seed {s.seed} --batch-size {ss.batch_size}"


def control_eval(base, scenes, tuners: dict[str, Path], out: Path, ss, s: QuickstartSettings,
                  commands: dict) -> dict:
    from ..sampling import compose, load_tuners, read_prompts, sample
    from ..toy import edge_f1, score_images
    from ..metrics.control_maps import color_error

    ev = out / "eval"
    # Each prompt carries its own canny and colour maps (eval/control_prompts.jsonl), so every run is one batch.
    prompts = read_prompts(ev / "control_prompts.jsonl")
    loaded = dict(zip(CONDITIONS, load_tuners([tuners[c] for c in CONDITIONS], base)))
    samples = out / "samples" / "control"
    paths: dict[str, list[Path]] = {"base": list(sample(base, prompts, samples / "base", settings=ss).images)}
    for c in CONDITIONS:
        paths[c] = list(sample(base, prompts, samples / c, tuners=[loaded[c]], settings=ss).images)
    swept = compose(base, prompts, samples / "compose", tuners=[loaded["canny"], loaded["color"]], controls=[],
                    settings=ss, sweep=3).images  # prompt by prompt: weights (1, 0), (.5, .5), (0, 1)
    for v, name in enumerate(("compose_1_0", "compose_mid", "compose_0_1")):
        paths[name] = swept[v::3]
    files = f"--prompts {shlex.quote(str(ev / 'control_prompts.jsonl'))} {_sampling_options(ss, s)}"
    model, canny, color = (shlex.quote(str(p)) for p in (base.source, tuners["canny"], tuners["color"]))
    commands["sample_canny"] = (f"scedit sample --model {model} --tuner {canny} {files} "
                                f"--out {shlex.quote(str(samples / 'canny'))}")
    commands["compose_sweep"] = (f"scedit compose --model {model} --tuner {canny} --tuner {color} --sweep 3 {files} "
                                 f"--out {shlex.quote(str(samples / 'compose'))}")

    cond_edges = [load_rgb(ev / "canny" / f"{i:02d}.png")[..., 0] > 127 for i in range(len(scenes))]
    cond_colors = [load_rgb(ev / "color" / f"{i:02d}.png") for i in range(len(scenes))]
    res: dict = {"n": len(scenes)}
    imgs = {k: load_images(v) for k, v in paths.items()}
    for k, ims in imgs.items():
        acc = score_images(ims, scenes)
        res[k] = {
            "edge_f1": mean([edge_f1(_edges(im), e) for im, e in zip(ims, cond_edges)]),
            "color_error": mean([color_error(c, _color_map(im)) for im, c in zip(ims, cond_colors)]),
            **{m: acc[m] for m in ("colour", "shape", "position", "background", "iou", "all")},
        }
    res["compose_identity"] = {
        "weights_1_0_vs_canny_max_abs_diff": int(max(np.abs(a.astype(int) - b.astype(int)).max()
                                                     for a, b in zip(imgs["compose_1_0"], imgs["canny"]))),
        "weights_0_1_vs_color_max_abs_diff": int(max(np.abs(a.astype(int) - b.astype(int)).max()
                                                     for a, b in zip(imgs["compose_0_1"], imgs["color"]))),
    }
    res["paths"] = {k: [rel(p, out) for p in v] for k, v in paths.items()}
    return res


def write_grids(out: Path, report: dict, s: QuickstartSettings) -> None:
    """One contact sheet per comparison (rows: condition maps, base, tuned), and the loss-curve list."""
    from PIL import Image

    from ..sampling.grid import write_contact_sheet

    def sheet(paths, dest: Path) -> None:  # the 64-px toy images, enlarged pixel for pixel
        write_contact_sheet(paths, dest, cols=n, cell=96, upscale=True, resample=Image.NEAREST)

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
    sheet([p for _, ps in rows for p in ps], out / "grids" / "control.png")
    report["grids"] = {"control": "grids/control.png", "control_rows": [r for r, _ in rows]}
    st = out / "samples" / "style"
    srows = [("real images of the style", None), ("base", sorted((st / "before").glob("0*.png"))[:n]),
             ("SC-Tuner", sorted((st / "after").glob("0*.png"))[:n])]
    from ..toy import ToyWorld, render

    scenes = ToyWorld().scenes(s.n_eval, s.seed + 1000, s.style)[:n]
    real = out / "grids" / "style-real"
    real.mkdir(exist_ok=True)
    for i, sc in enumerate(scenes):
        render(sc).save(real / f"{i:02d}.png")
    srows[0] = ("real images of the style", sorted(real.glob("*.png")))
    sheet([p for _, ps in srows for p in ps], out / "grids" / "style.png")
    shutil.rmtree(real)
    report["grids"]["style"] = "grids/style.png"
    report["grids"]["style_rows"] = [r for r, _ in srows]

