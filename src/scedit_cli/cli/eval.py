"""`scedit eval`: FID, controllability, and a recipe's parameters / training memory / step time."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..console import info, out_console, print_json, progress
from ..fsutil import check_output_location, write_json_atomic
from ..values import finite_float
from . import app, on_interrupt


@app.command("eval")
def eval_command(
    recipe: Path = typer.Argument(None, help="Training recipe (TOML) for --params / --memory / --time."),
    fid: bool = typer.Option(False, "--fid", help="FID of --generated against --reference (pytorch-fid Inception)."),
    control: bool = typer.Option(False, "--control", help="Controllability of a `scedit sample` output folder "
                                 "(--generated): canny edge F1, HED SSIM, depth RMSE, seg mIoU, pose PCK, "
                                 "colour-map error; writes a per-image CSV, a summary JSON and a worst-cases PNG."),
    params: bool = typer.Option(False, "--params", help="Trainable parameters of RECIPE."),
    memory: bool = typer.Option(False, "--memory", help="Peak training memory of RECIPE (one real step)."),
    time_: bool = typer.Option(False, "--time", help="Median training-step time of RECIPE after warm-up."),
    generated: Path = typer.Option(None, "--generated", help="Folder of generated images (a `sample` output)."),
    reference: str = typer.Option(None, "--reference", help="Reference images: a folder, a `prepare` dataset "
                                  "folder, or a .npz of FID statistics."),
    inception_weights: Path = typer.Option(None, "--inception-weights", help="pytorch-fid's "
                                           "pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache)."),
    dims: int = typer.Option(2048, "--dims", help="Inception feature size: 2048 (pool3, standard), 768, 192 or 64."),
    batch_size: int = typer.Option(50, "--batch-size", help="Images per Inception batch."),
    workers: int = typer.Option(0, "--workers", help="Image-decoding worker processes."),
    stats_cache: Path = typer.Option(None, "--stats-cache", help="Folder for cached reference statistics "
                                     "(default ~/.cache/scedit/fid-stats)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write cached reference statistics."),
    edge_tolerance: int = typer.Option(0, "--edge-tolerance", help="Edge F1: pixels an edge may be off by."),
    annotator_weights: Path = typer.Option(None, "--annotator-weights", help="Folder of detector weights "
                                           "(hed / depth / seg / pose controllability)."),
    pose_threshold: float = typer.Option(0.05, "--pose-threshold", parser=finite_float, help="Pose PCK: a keypoint is correct within "
                                         "this fraction of the image's longer side."),
    detect_resolution: int = typer.Option(None, "--detect-resolution", help="--control: working resolution of "
                                          "the hed / depth / seg / pose detectors (default 512)."),
    report: Path = typer.Option(None, "--report", help="--control: folder for control_per_image.csv, "
                                "control_summary.json and control_worst.png (default: GENERATED-control beside "
                                "the generated folder)."),
    worst: int = typer.Option(8, "--worst", help="--control: worst images per condition in control_worst.png "
                              "(0: no sheet)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    steps: int = typer.Option(5, "--steps", help="--time: timed steps (median reported)."),
    warmup: int = typer.Option(2, "--warmup", help="--time: untimed warm-up steps."),
    batch: int = typer.Option(None, "--batch", help="--memory/--time: batch (default: the recipe's per step)."),
    resolution: int = typer.Option(None, "--resolution", help="--memory/--time: pixels (default: the recipe's)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value, e.g. --set method.ratio=10."),
    out: Path = typer.Option(None, "--out", help="Also write the result as JSON to this file."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Measure generated images (FID, controllability) or a training recipe (parameters, memory, time)."""
    on_interrupt("no result was written; run the command again (FID reference statistics already computed are cached)")
    from ..metrics.eval_settings import EvalSettings

    settings = EvalSettings(
        recipe=recipe, fid=fid, control=control, params=params, memory=memory, timing=time_, generated=generated,
        reference=reference, inception_weights=inception_weights, dims=dims, batch_size=batch_size, workers=workers,
        stats_cache=stats_cache, use_cache=not no_cache, edge_tolerance=edge_tolerance,
        annotator_weights=annotator_weights, pose_threshold=pose_threshold, detect_resolution=detect_resolution,
        report_dir=report, worst=worst, device=device, steps=steps, warmup=warmup, batch=batch,
        resolution=resolution, overrides=list(set_))
    settings.validate()  # before --out is checked, and before torch and the metrics load
    from ..metrics.evaluate import evaluate

    if out is not None:
        check_output_location(out, "--out", folder=False)
    bar = progress()
    task = None

    def on_control(kind: str, n: int) -> None:
        nonlocal task
        if kind == "start":
            bar.start()
            task = bar.add_task("controllability", total=n)
        else:
            bar.advance(task, n)

    try:
        evaluated = evaluate(settings, fid_progress=progress, on_control=on_control)
    finally:
        bar.stop()
    for warning in evaluated.warnings:
        typer.echo(f"warning: {warning}", err=True)  # one line, as errors are: no wrapping
    result = evaluated.to_dict()
    if out is not None:
        write_json_atomic(out, result)
    if json_out:
        print_json(result)
        return
    _render(result)


def _render(result: dict) -> None:
    t = Table(title="scedit eval")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("detail")
    if "fid" in result:
        f = result["fid"]
        t.add_row("FID", f"{f['fid']:.3f}", f"{f['generated_count']} generated vs {f['reference_count']} reference, "
                  f"{f['dims']}-d" + (" (reference statistics cached)" if f["reference_cached"] else ""))
    if "control" in result:
        c = result["control"]
        for cond, m in c["summary"].items():
            for k, v in m.items():
                if k == "count":
                    continue
                detail = "all images together" if k.endswith("_dataset") else f"mean of {m['count']} image(s)"
                t.add_row(f"{cond}: {k}", "-" if v is None else f"{v:.4f}", detail)
        for cond, why in c["not_measured"].items():
            t.add_row(f"{cond}", "-", escape(f"not measured: {why}"))
        for kind, path in c["report"].items():
            t.add_row(kind, "", escape(str(path)))
    if "recipe" in result:
        r = result["recipe"]
        t.add_row("trainable parameters", f"{r['trainable_params'] / 1e6:.2f}M",
                  escape(f"{r['method']} on {r['base']}"))
        if "memory" in r:
            m = r["memory"]
            gi = 2 ** 30
            accounted = (f"params {m['params_bytes'] / gi:.2f} + grads {m['grads_bytes'] / gi:.2f} + optimizer "
                         f"{m['optimizer_bytes'] / gi:.2f} + autograd-saved {m['saved_bytes'] / gi:.2f} GiB")
            t.add_row("peak training memory", f"{m['peak_bytes'] / gi:.2f} GiB",
                      "CUDA max_memory_allocated" if m.get("cuda_peak_bytes") is not None else
                      "tensors at rest + the step's at most (temporaries included)"
                      if m.get("tensor_peak_bytes") is not None else accounted)
            if m.get("tensor_peak_bytes") is not None:
                t.add_row("accounted", f"{m['accounted_bytes'] / gi:.2f} GiB", accounted)
            if m.get("peak_rss_bytes"):
                t.add_row("peak RSS", f"{m['peak_rss_bytes'] / gi:.2f} GiB", f"process, {m['peak_rss_source']}")
            t.add_row("encoder activations saved", f"{m['saved_encoder_bytes'] / 2**20:.1f} MiB",
                      "bytes autograd keeps for the U-Net upstream of the skips")
        if "timing" in r:
            tm = r["timing"]
            t.add_row("step time (median)", f"{tm['median_s']:.3f} s",
                      f"{tm['steps']} steps after {tm['warmup']} warm-up")
    out_console.print(t)
    sources = (["FID from pytorch-fid's Inception"] if "fid" in result else []) + (
        ["memory and time from the training loop's own step"]
        if any(k in result.get("recipe", {}) for k in ("memory", "timing")) else [])
    if sources:
        info("; ".join(sources) + ".", style="dim")
