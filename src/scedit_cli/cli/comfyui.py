"""`scedit comfyui install`: put scedit's nodes into a ComfyUI checkout."""

from __future__ import annotations

from pathlib import Path

import typer

from ..console import info, print_json
from . import app, command_group, on_interrupt

comfyui_app = command_group(help="Use scedit tuners in ComfyUI (SCEdit Tuner and SCEdit Control nodes).",
                          no_args_is_help=True)
app.add_typer(comfyui_app, name="comfyui")


@comfyui_app.command("install")
def install_command(
    comfyui_dir: Path = typer.Argument(..., help="The ComfyUI checkout (the folder with main.py)."),
    force: bool = typer.Option(False, "--force", help="Replace a custom_nodes/scedit/__init__.py that differs."),
    json_out: bool = typer.Option(False, "--json", help="Print what was done as JSON on stdout."),
) -> None:
    """Write custom_nodes/scedit/__init__.py (it imports scedit from ComfyUI's Python) and models/scedit/."""
    on_interrupt("the loader and models/scedit/ are written whole or not at all; run the command again")
    from ..comfyui.install import install

    result = install(comfyui_dir, force=force)
    if json_out:
        print_json(result.to_dict())
        return
    info(f"scedit nodes loader {result.status}: {result.loader}")
    info(f"put tuners (folders, .safetensors, official SCEdit checkpoints) in: {result.models_dir}")
    info(f"scedit must be importable by the Python ComfyUI runs in: {result.pip_command}; then restart ComfyUI")
