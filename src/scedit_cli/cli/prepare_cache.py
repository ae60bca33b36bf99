"""`scedit prepare cache`: VAE latents, text embeddings and condition maps, encoded once."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..console import info, print_json, progress
from ..errors import SceditError
from . import on_interrupt
from .prepare import prepare_app


@prepare_app.command("cache")
def prepare_cache_cmd(
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Training recipe: its model, data and settings."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (without --recipe)."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Dataset (without --recipe)."),
    resolution: int = typer.Option(512, "--resolution", help="Training resolution (without --recipe)."),
    conditions: Optional[str] = typer.Option(None, "--conditions", help="Comma-separated condition columns to cache (CSC)."),
    set_: List[str] = typer.Option([], "--set", help="Recipe override KEY=VALUE, e.g. data.random_flip=true."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Cache folder (default: scedit-cache/ next to the dataset)."),
    shard: str = typer.Option("0/1", "--shard", help="i/n: encode the entries whose key falls in shard i of n."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images / captions per encoder batch."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if present)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Encode every image (VAE posterior; flipped too with data.random_flip) and caption once."""
    on_interrupt("the entries encoded so far are kept in the cache; run the same command again to encode the rest")
    from ..prepare.runner import parse_shard
    from ..recipes import dataset_recipe, load_recipe

    if recipe is None:
        if model is None or input is None:
            raise SceditError("scedit prepare cache needs --recipe R, or --model M and --input DATASET")
        target = dataset_recipe(model, input, resolution, [c.strip() for c in (conditions or "").split(",") if c.strip()])
    else:
        if model or input or conditions:
            raise SceditError("--recipe takes model, data and conditions from the recipe; use --set to change them")
        target = str(recipe)
    r = load_recipe(target, list(set_))
    shard_of = parse_shard(shard)
    r.check_sources()  # a wrong path is reported in a second, before torch and diffusers load
    from ..cache import prepare_cache

    bar = progress()
    task = None

    def on_progress(done, total):
        nonlocal task
        if task is None:
            task = bar.add_task("cache", total=total)
        bar.update(task, completed=done)

    with bar:
        summary = prepare_cache(r, None, str(output) if output else None, shard_of, batch_size, device, on_progress)
    if json_out:
        print_json(summary.to_dict())
        return
    info(f"cache {summary.stats.folder}: {summary.stats.images} image, {summary.stats.texts} caption, "
         f"{summary.stats.conditions} condition entries encoded; {summary.stats.already} already there; "
         f"{summary.stats.unusable} unusable; {summary.missing} of {summary.entries} entries still missing"
         + (" (other shards)" if summary.missing else "")
         + f"; {summary.seconds} s, {summary.images_per_second or 0} images/s on {summary.device}")  # no [..]: console markup
