"""`scedit train RECIPE.toml [--set key=value ...] [--resume latest|PATH | --overwrite] [--dry-run] [--json]`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..console import info, print_json, warn
from . import app, on_interrupt


@app.command("train")
def train_command(
    recipe: Path = typer.Argument(..., help="Training recipe (TOML); see recipes/ for the paper's runs."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set train.max_steps=500 (repeatable)."),
    resume: str = typer.Option(None, "--resume", help="'latest' or a checkpoint folder to continue from "
                               "(with the same recipe; train.max_steps, [logging], [validation], [checkpoint] may change)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in a train.output_dir that holds another "
                                   "run: removes its checkpoints, sample grids, EMA weights, loss curve and "
                                   "TensorBoard logs; its trained weights are replaced when this run saves."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build everything (meta device if the model is not here), "
                                 "print the plan, train nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print the result (or the plan) as JSON on stdout."),
) -> None:
    """Train a tuner or a baseline as a recipe says (one command per experiment of the paper)."""
    # Inside the training loop Ctrl-C saves a checkpoint (below); this is for loading and the final save.
    on_interrupt("stopped outside the training loop (loading, or the final save); checkpoints already saved are "
                 "kept: continue with --resume latest")
    from ..recipes import load_recipe

    r = load_recipe(recipe, list(set_))  # a bad recipe is reported before torch and diffusers load (seconds)
    if not dry_run:  # the first checks `train` makes, in its order, made before its imports (a dry run plans without them)
        from ..fsutil import check_output_location

        check_output_location(r.train.output_dir, f"{r.path}: train.output_dir")
        from ..training.rundir import check_fresh_run, check_resume_before_loading

        if resume is None:
            check_fresh_run(Path(r.train.output_dir), overwrite)
        else:
            check_resume_before_loading(Path(r.train.output_dir), resume, r)
        r.check_sources()
    from ..training import train

    result = train(r, resume=resume, dry_run=dry_run, overwrite=overwrite)
    if dry_run:
        plan = result.plan
        if json_out:
            print_json(plan.to_dict())
        else:
            info(f"recipe      {plan.recipe}")
            info(f"method      {plan.method}")
            info(f"model       {plan.model}  ({plan.model_built_from}, prediction {plan.prediction_type})")
            info(f"trainable   {plan.trainable_parameters:,} parameters ({plan.trainable_parameters_m}M)")
            size = plan.dataset_size
            rows = ("unknown (streaming)" if plan.dataset_streaming
                    else f"{size:,} rows" if size is not None else "NOT AVAILABLE")
            info(f"dataset     {plan.data}: {rows}")
            info(f"steps       {plan.steps:,} x batch {plan.batch_size} "
                 f"({plan.processes} process(es) x accumulation {plan.gradient_accumulation_steps})")
            info(f"output      {plan.output_dir}")
        if plan.dataset_error:
            warn(plan.dataset_error)
        return
    if not result.is_main_process:  # under `accelerate launch`, rank 0 reports
        return
    if json_out:
        print_json(result.summary())
    elif result.outputs:
        info(f"trained {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}; "
             f"wrote {', '.join(result.outputs)}")
    if result.skipped:
        info(f"skipped {result.skipped} unreadable sample(s), e.g. {result.skipped_examples[0]}")
    if result.interrupted:
        info(f"interrupted at step {result.steps}; checkpoint saved, continue with --resume latest")
        sys.exit(130)
