"""`scedit analyze ...`: analyses of a base model. `skips`: what the skip connections carry (Fig. 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..console import info, print_json
from ..hubutil import check_model_source
from ..values import finite_float
from . import app, command_group, on_interrupt

analyze_app = command_group(help="Analyse a base model: what its skip connections carry (paper Fig. 3).",
                          no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("skips")
def skips_command(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for skips.json and the PNGs (files in it are replaced)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (default: the toy base that ships with scedit)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="One prompt."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts file: .txt (one a line) or .jsonl."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", "-s", help="Seed; repeat for several images per prompt (default 0)."),
    mode: Optional[list[str]] = typer.Option(None, "--mode", help="Replace removed skips by zero and/or mean (spatial mean); repeatable (default both)."),
    steps: int = typer.Option(25, "--steps", help="Denoising steps."),
    scheduler: str = typer.Option("ddim", "--scheduler", help="Scheduler name, as in `scedit sample`."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", "--cfg", parser=finite_float,
                                          help="Classifier-free guidance scale."),
    size: Optional[int] = typer.Option(None, "--size", help="Square image size in px (default: the model's native size)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per pipeline call (removal variants run side by side)."),
    map_steps: Optional[int] = typer.Option(None, "--map-steps", help="Timesteps shown in feature_maps.png (default 4, at most --steps)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads (default 1: small models such as the toy "
                                "base run fastest on one; give more for SD-size models on a many-core CPU)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary (removal scores, skip table) as JSON."),
) -> None:
    """Remove skips (each alone, all, each half) by zero / spatial mean, trace their statistics along the
    denoising trajectory, and draw their feature maps: skips.json and PNGs in --out."""
    on_interrupt(f"files already written in {out} are complete but the analysis is not; run the command again")
    if model:
        check_model_source(model)
    from ..analysis import SkipAnalysisSettings
    from ..errors import SceditError
    from ..sampling import prompt_list
    from ..toy import base_model_path

    if threads < 1:
        raise SceditError(f"--threads must be >= 1, got {threads}")
    settings = SkipAnalysisSettings(steps=steps, scheduler=scheduler, guidance_scale=guidance_scale,
                                    seeds=tuple(seed or [0]), modes=tuple(mode or ("zero", "mean")),
                                    batch_size=batch_size, map_steps=map_steps, width=size, height=size)
    settings.validate()  # before torch loads
    specs = prompt_list(prompt, prompts)
    import torch

    from ..analysis import analyze_skips

    torch.set_num_threads(threads)
    result = analyze_skips(model or str(base_model_path()), specs, out, settings,
                           device=device, dtype=dtype)
    if json_out:
        print_json(result.to_dict())
        return
    worst = max(result.summary["removal"], key=lambda r: r["change"])
    info(f"analyze skips: {len(result.summary['removal'])} removal variants, {len(result.summary['skips'])} skips; "
         f"largest change {worst['change']:.3f} ({worst['mode']}-{worst['name']}) -> {result.out}")
    for key in ("json", "change", "output_distribution", "trajectory", "ratio", "feature_maps"):
        info(f"  {key}: {result.files[key]}")
