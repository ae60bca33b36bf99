"""`scedit sample`, `scedit compose`, `scedit convert`: thin wrappers over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..console import info, print_json
from ..hubutil import check_model_source
from ..values import finite_float
from . import app, on_interrupt

_HELP_CONTROL = (
    "NAME:IMAGE[:SCALE]: compute the condition map NAME (canny, color, depth, ...) from a raw image with "
    "the `prepare` code. Repeatable."
)
_HELP_CONTROL_MAP = "NAME:MAP[:SCALE]: a ready-made condition map, used as it is (resized to the output size). Repeatable."


def _settings(steps, scheduler, guidance_scale, width, height, size, negative_prompt, seeds, batch_size,
              tuner_scale, control_scale, grid_max, overwrite, annotator_weights):
    from ..errors import SceditError
    from ..sampling import SampleSettings

    if size is not None and (width is not None or height is not None):
        raise SceditError("give --size or --width/--height, not both")
    return SampleSettings(
        steps=steps,
        scheduler=scheduler,
        guidance_scale=guidance_scale,
        width=size or width,
        height=size or height,
        negative_prompt=negative_prompt,
        seeds=tuple(seeds or [0]),
        batch_size=batch_size,
        tuner_scale=tuner_scale,
        control_scale=control_scale,
        grid_max=grid_max,
        overwrite=overwrite,
        annotator_weights=annotator_weights,
    )


def _controls(control, control_map, mask, extend):
    from ..sampling import parse_control
    from ..sampling.masked import with_mask_options

    controls = [parse_control(c, False, "--control") for c in control or []] + [
        parse_control(c, True, "--control-map") for c in control_map or []
    ]
    return with_mask_options(controls, mask, extend)


def _kept_on_interrupt(out: Path) -> None:
    on_interrupt(f"the images finished so far (if any) are kept in {out}; run the same command again to make the rest")


def _report(result, json_out: bool, what: str) -> None:
    if json_out:
        print_json(result.to_dict())
        return
    spi = f", {result.seconds_per_image:.2f} s/image" if result.seconds_per_image else ""
    info(f"{what}: {result.generated} image(s) generated, {result.skipped} already there{spi} -> {result.out}")
    if result.grid:
        info(f"contact sheet: {result.grid}")


# Options shared by sample and compose (Typer needs them spelled out per command).
_model = typer.Option(..., "--model", "-m", help="Base model: diffusers folder, .safetensors file or hub id (offline: cached).")
_prompt = typer.Option(None, "--prompt", "-p", help="One prompt.")
_prompts = typer.Option(None, "--prompts", help="Prompts file: .txt (one a line) or .jsonl ({\"prompt\", \"negative_prompt\", \"seed\", \"control_map\": {\"canny\": \"maps/1.png\"}}).")
_neg = typer.Option(None, "--negative-prompt", "-n", help="Negative prompt (jsonl lines may override it).")
_HELP_TUNER = ("Tuner folder or .safetensors (from `scedit train` or `scedit convert`), or a Hub id "
               "user/repo[/sub/folder][@revision] (offline: from the HF cache).")
_tuner = typer.Option(None, "--tuner", "-t", help=_HELP_TUNER + " Repeatable.")
_out = typer.Option(..., "--out", "-o", help="Output folder: PNGs, manifest.jsonl, grid.png. Re-running resumes.")
_steps = typer.Option(50, "--steps", help="Denoising steps.")
_sched = typer.Option("ddim", "--scheduler", help="Scheduler: ddim, euler, euler_a, dpm++, unipc, pndm, ... or any compatible diffusers class name.")
_cfg = typer.Option(7.5, "--guidance-scale", "--cfg", parser=finite_float, help="Classifier-free guidance scale (<= 1 turns guidance off).")
_seed = typer.Option(None, "--seed", "-s", help="Seed; repeat for several images per prompt (default 0).")
_bs = typer.Option(1, "--batch-size", "-b", help="Images per pipeline call.")
_w = typer.Option(None, "--width", help="Image width in px (default: the base model's native size; outpaint: the "
                 "image inside the canvas, default its own size).")
_h = typer.Option(None, "--height", help="Image height in px.")
_size = typer.Option(None, "--size", help="Square image size in px (instead of --width/--height).")
_grid = typer.Option(64, "--grid-max", help="Images in the contact sheet grid.png (0: none).")
_over = typer.Option(False, "--overwrite", help="Regenerate images that are already in --out.")
_dev = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N.")
_dtype = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU).")
_annot = typer.Option(None, "--annotator-weights", help="Folder with detector weights for depth/hed/seg/pose maps.")
_json = typer.Option(False, "--json", help="Print a JSON summary on stdout.")
_mask = typer.Option(None, "--mask", help="For --control inpaint:IMAGE: a mask of the image's size (white = repaint), "
                     "or auto[:SEED] for the LaMa-style mask `scedit prepare --seed SEED` draws for that image.")
_extend = typer.Option(None, "--extend", help="For --control outpaint:IMAGE: margins as fractions of the image, "
                       "e.g. left=0.25,right=0.25 (multiples of 8 px); the output is the extended canvas.")


@app.command("sample")
def sample_command(
    model: str = _model,
    out: Path = _out,
    prompt: Optional[str] = _prompt,
    prompts: Optional[Path] = _prompts,
    negative_prompt: Optional[str] = _neg,
    tuner: Optional[list[str]] = _tuner,
    control: Optional[list[str]] = typer.Option(None, "--control", "-c", help=_HELP_CONTROL),
    control_map: Optional[list[str]] = typer.Option(None, "--control-map", help=_HELP_CONTROL_MAP),
    mask: Optional[str] = _mask,
    extend: Optional[str] = _extend,
    tuner_scale: float = typer.Option(1.0, "--tuner-scale", parser=finite_float,
                                      help="Weight of the SC-Tuners' edits (0: off, 1: as trained)."),
    control_scale: float = typer.Option(1.0, "--control-scale", parser=finite_float,
                                        help="Multiplies every condition's scale."),
    steps: int = _steps,
    scheduler: str = _sched,
    guidance_scale: float = _cfg,
    seed: Optional[list[int]] = _seed,
    batch_size: int = _bs,
    width: Optional[int] = _w,
    height: Optional[int] = _h,
    size: Optional[int] = _size,
    grid_max: int = _grid,
    overwrite: bool = _over,
    device: str = _dev,
    dtype: Optional[str] = _dtype,
    annotator_weights: Optional[str] = _annot,
    json_out: bool = _json,
) -> None:
    """Generate images with a base model and zero or more tuners (SC and CSC)."""
    _kept_on_interrupt(out)
    check_model_source(model)
    from ..sampling import prompt_list, sample

    specs = prompt_list(prompt, prompts)
    settings = _settings(steps, scheduler, guidance_scale, width, height, size, negative_prompt, seed, batch_size,
                         tuner_scale, control_scale, grid_max, overwrite, annotator_weights)
    result = sample(model, specs, out, tuners=tuner or [], controls=_controls(control, control_map, mask, extend),
                    settings=settings, device=device, dtype=dtype)
    _report(result, json_out, "sample")


@app.command("compose")
def compose_command(
    model: str = _model,
    out: Path = _out,
    tuner: list[str] = typer.Option(..., "--tuner", "-t", help="CSC-Tuner (one per condition) and optional SC-Tuners: " + _HELP_TUNER + " Repeatable."),
    prompt: Optional[str] = _prompt,
    prompts: Optional[Path] = _prompts,
    negative_prompt: Optional[str] = _neg,
    control: Optional[list[str]] = typer.Option(
        None, "--control", "-c",
        help="NAME:IMAGE[:WEIGHT], map computed from a raw image. Weights are normalised to sum to 1 (Eq. 7). "
             "Give one condition several times for one image per map (Fig. 9a)."),
    control_map: Optional[list[str]] = typer.Option(None, "--control-map", help="NAME:MAP[:WEIGHT], a ready-made map."),
    mask: Optional[str] = _mask,
    extend: Optional[str] = _extend,
    sweep: Optional[int] = typer.Option(None, "--sweep", help="With two conditions: N images whose weights go from (1, 0) to (0, 1) (Fig. 9b)."),
    control_scale: float = typer.Option(1.0, "--control-scale", parser=finite_float,
                                        help="Multiplies the normalised weights."),
    tuner_scale: float = typer.Option(1.0, "--tuner-scale", parser=finite_float, help="Weight of SC-Tuners' edits."),
    steps: int = _steps,
    scheduler: str = _sched,
    guidance_scale: float = _cfg,
    seed: Optional[list[int]] = _seed,
    batch_size: int = _bs,
    width: Optional[int] = _w,
    height: Optional[int] = _h,
    size: Optional[int] = _size,
    grid_max: int = _grid,
    overwrite: bool = _over,
    device: str = _dev,
    dtype: Optional[str] = _dtype,
    annotator_weights: Optional[str] = _annot,
    json_out: bool = _json,
) -> None:
    """Several CSC-Tuners at once with weights alpha (Eq. 7); --sweep interpolates between two conditions."""
    _kept_on_interrupt(out)
    check_model_source(model)
    from ..sampling import compose, prompt_list

    specs = prompt_list(prompt, prompts)
    settings = _settings(steps, scheduler, guidance_scale, width, height, size, negative_prompt, seed, batch_size,
                         tuner_scale, control_scale, grid_max, overwrite, annotator_weights)
    result = compose(model, specs, out, tuners=tuner, controls=_controls(control, control_map, mask, extend),
                     settings=settings, sweep=sweep, device=device, dtype=dtype)
    _report(result, json_out, "compose")


@app.command("convert")
def convert_command(
    src: Path = typer.Argument(..., help="Official checkpoint: scepter pytorch_model.bin, ms-swift adapter folder/file."),
    out: Path = typer.Option(..., "--out", "-o", help="Tuner folder to write."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The base model the checkpoint was trained on."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Or its architecture: sd15, sd21, sdxl."),
    condition: Optional[str] = typer.Option(None, "--condition", help="Condition of a controllable-generation checkpoint (canny, depth, ...)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a tuner already in --out."),
    json_out: bool = _json,
) -> None:
    """Convert official SCEdit weights (scepter, ms-swift) into a scedit tuner folder."""
    on_interrupt(f"the conversion did not finish; run the command again to write {out}")
    from ..convert import convert_checkpoint

    result = convert_checkpoint(src, out, model=model, arch=arch, condition=condition, overwrite=overwrite)
    if json_out:
        print_json(result.to_dict())
    else:
        info(f"converted {result.source_format} {result.method} tuner ({result.trainable_parameters:,} parameters, "
             f"skips {result.tuned_skips}) -> {result.out}")
