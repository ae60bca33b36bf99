"""Model cards: every tuner folder `scedit train` / `scedit convert` writes gets a Hub-ready README.md.

The YAML front matter is huggingface_hub's `ModelCardData` (`library_name: scedit`, tags `scedit`,
`sc-tuner` / `csc-tuner` and the condition, `base_model` when the base is a Hub id, `license` when the
base model's own README states one, `instance_prompt` when the training captions carry the `<sce>`
trigger). The body says what the tuner is (method, trainable parameters, recipe, steps, final loss,
the last validation grid, copied into the folder) and how to use it from `scedit sample`, diffusers
and ComfyUI. The folder can then be uploaded as it is: `hf upload USER/REPO FOLDER`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import atomic_path, write_text_atomic
from ..recipes import ARCHES
from .files import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

GRID_NAME = "validation.png"
REPO = "USER/REPO"  # stands for the Hub repo the folder is uploaded to


def _trigger() -> str:
    from ..prepare.style import StyleConfig

    return StyleConfig.trigger  # what `scedit prepare style` inserts into captions


def caption_trigger(captions) -> str | None:
    """The trigger word if any caption carries it (as a word of its own), else None."""
    trigger = _trigger()
    return trigger if any(trigger in str(c).split() for c in captions) else None


@dataclass
class CardFacts:
    """What a card says beyond the folder's tuner_config.json; every field is optional."""

    base: str | None = None  # the base model as the user gave it (hub id, folder, file, or an arch name)
    recipe_name: str | None = None
    recipe_description: str | None = None
    recipe: dict | None = None  # the recipe as written (with --set overrides), shown as TOML
    steps: int | None = None
    final_loss: float | None = None
    grid: Path | None = None  # the last validation grid, copied into the folder
    grid_step: int | None = None
    trigger: str | None = None
    converted_from: str | None = None
    source_format: str | None = None


def _is_hub_id(source: str | None) -> bool:
    from .hub import parse_hub_source

    if not source or Path(source).expanduser().exists():
        return False
    hub = parse_hub_source(source)
    return hub is not None and not hub.subfolder and hub.revision is None


def base_license(base: str | None) -> str | None:
    """`license` from the base model's README.md front matter (a local folder, or a hub id in the HF
    cache), else None: the card then states no license rather than guess one."""
    import yaml
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.repocard import metadata_load

    if not base:
        return None
    readme = Path(base).expanduser() / CARD_NAME
    if not readme.is_file():
        cached = try_to_load_from_cache(base, CARD_NAME) if _is_hub_id(base) else None
        if not isinstance(cached, str):
            return None
        readme = Path(cached)
    try:
        meta = metadata_load(readme) or {}
    except (OSError, ValueError, yaml.YAMLError):  # an unreadable card states no license
        return None
    value = meta.get("license")
    return str(value) if value else None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v), ensure_ascii=False)  # a TOML basic string


def recipe_toml(raw: dict) -> str:
    """A recipe dict (as `load_recipe` parsed it) as TOML that `scedit train` reads back."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for name, values in raw.items():
        if isinstance(values, dict):
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines).strip() + "\n"


def _millions(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f}M)"


def card_text(meta: dict, facts: CardFacts, has_grid: bool) -> str:
    """The README.md of a tuner folder whose tuner_config.json is `meta`."""
    from huggingface_hub import ModelCard, ModelCardData

    from .. import __version__

    method = meta.get("method", "sc")
    cfg = meta.get("config", {})
    condition = cfg.get("condition") if method == "csc" else None
    kind = "CSC-Tuner" if method == "csc" else "SC-Tuner"
    base = facts.base or meta.get("base_model")
    trigger = facts.trigger
    tags = ["scedit", f"{method}-tuner"] + ([condition] if condition else [])
    data = ModelCardData(
        base_model=base if _is_hub_id(base) else None,
        library_name="scedit",
        license=base_license(base),
        pipeline_tag="text-to-image",
        tags=tags,
        instance_prompt=trigger,
    )
    n_skips = len(meta.get("layout", {}).get("channels", []))
    skips = cfg.get("skips")
    rows = [
        ("method", f"{kind} (`{method}`): OP `{cfg.get('op', 'linear')}`, ratio {cfg.get('ratio', 1)}, "
                   f"skips {'all ' + str(n_skips) if skips is None else skips}"
                   + (f", hint kernel {cfg.get('hint_kernel')}" if method == "csc" else "")),
    ]
    if condition:
        rows.append(("condition", f"`{condition}` ({cfg.get('in_channels', 3)}-channel map)"))
    is_arch = base in ARCHES  # `scedit convert --arch`: an architecture, no particular model
    rows.append(("base model", f"any `{base}` model (converted for that architecture)" if is_arch
                 else f"`{base}`" if base else "unknown"))
    if meta.get("trainable_parameters") is not None:
        rows.append(("trainable parameters", _millions(int(meta["trainable_parameters"]))))
    if facts.recipe_name:
        rows.append(("recipe", f"`{facts.recipe_name}`" + (f": {facts.recipe_description}"
                                                           if facts.recipe_description else "")))
    if facts.steps is not None:
        rows.append(("training steps", str(facts.steps)))
    if facts.final_loss is not None:
        rows.append(("final loss", f"{facts.final_loss:.4f}"))
    if meta.get("alpha") is not None:
        rows.append(("alpha", f"{meta['alpha']:g} (its weight in the multi-condition training, Eq. 7)"))
    if meta.get("ema_decay"):
        rows.append(("weights", f"exponential moving average of the trained weights, decay {meta['ema_decay']:g}"))
    if trigger:
        rows.append(("trigger word", f"`{trigger}` (the training captions carry it: put it in your prompts)"))
    if facts.converted_from:
        rows.append(("converted from", f"`{facts.converted_from}` ({facts.source_format}) with `scedit convert`"))
    rows.append(("skip layout", f"`{meta.get('layout', {}).get('fingerprint', '?')}`, {n_skips} skips"))
    rows.append(("written by", f"scedit {meta.get('scedit_version') or __version__}"))

    what = (f"{'an' if method == 'sc' else 'a'} **{kind}** for SCEdit (Jiang et al., CVPR 2024): small "
            "tuners that edit the skip connections of a Stable Diffusion U-Net")
    what += (f", fed with `{condition}` condition images through a dense hint cascade (controllable generation)."
             if condition else ", for text-to-image tuning (a style, a subject, a domain).")
    prompt = f"{trigger + ' ' if trigger else ''}a photo of a cat"
    base_arg = base if base and not is_arch else "BASE"
    control_cli = f" \\\n  --control {condition}:photo.jpg" if condition else ""
    control_py = (f", conditions={{\"{condition}\": Image.open(\"photo.jpg\")}}" if condition else "")
    import_pil = "from PIL import Image\n" if condition else ""
    node = "SCEdit Control" if condition else "SCEdit Tuner"
    body = [
        f"# {kind}{f' ({condition})' if condition else ''} for "
        + (f"`{base}` models" if is_arch else f"`{base}`" if base else "Stable Diffusion"),
        "",
        f"This folder holds {what} It is `{WEIGHTS_NAME}` (the weights) and `{CONFIG_NAME}` (method, "
        "hyperparameters and the skip layout it fits), written by scedit.",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in rows],
    ]
    if has_grid:
        body += ["", f"## Validation samples{f' (step {facts.grid_step})' if facts.grid_step else ''}", "",
                 (f"Top row: the `{condition}` conditions; bottom row: samples. " if condition else "")
                 + "Generated during training with the recipe's validation prompts.", "",
                 f"![validation samples]({GRID_NAME})"]
    body += [
        "", "## Use it", "",
        f"`{REPO}` below is the Hub repo this folder was uploaded to (`hf upload {REPO} .` from inside it); "
        "the folder's local path works everywhere too." + ("" if base_arg != "BASE" else
        " `BASE` is the Stable Diffusion model the tuner was trained on (a diffusers folder or Hub id)."),
        "", "### scedit", "", "```bash",
        f"scedit sample -m {base_arg} -t {REPO} -p \"{prompt}\" -o samples/{control_cli}", "```",
        "", "### diffusers", "", "```python",
        f"from diffusers import DiffusionPipeline\n{import_pil}import scedit_cli\n",
        f"pipe = DiffusionPipeline.from_pretrained(\"{base_arg}\")",
        f"handle = scedit_cli.apply_tuners(pipe, [\"{REPO}\"]{control_py})",
        f"image = pipe(\"{prompt}\").images[0]",
        "handle.remove()  # the plain pipeline again", "```",
        "", "### ComfyUI", "",
        "`scedit comfyui install COMFYUI_DIR` (with scedit installed in ComfyUI's Python), put this folder "
        f"into `COMFYUI_DIR/models/scedit/`, and apply it to the model with the **{node}** node.",
    ]
    if facts.recipe:
        body += ["", "## Training recipe", "", "Train it again with `scedit train recipe.toml`:", "",
                 "```toml", recipe_toml(facts.recipe).rstrip(), "```"]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
    return str(card)


def write_model_card(folder: str | Path, facts: CardFacts | None = None) -> Path:
    """Write `folder/README.md` (atomically) for the tuner in `folder`; copy the validation grid in."""
    folder = Path(folder)
    facts = facts or CardFacts()
    meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    has_grid = facts.grid is not None and Path(facts.grid).is_file()
    if has_grid:
        with atomic_path(folder / GRID_NAME) as tmp:
            shutil.copyfile(facts.grid, tmp)
    write_text_atomic(folder / CARD_NAME, card_text(meta, facts, has_grid))
    return folder / CARD_NAME


def write_training_cards(outputs: list[Path], recipe, steps: int, final_loss: float | None, out: Path,
                         trigger: str | None) -> list[Path]:
    """A card in every tuner folder a `scedit train` run saved (other methods' outputs are not tuner folders)."""
    grids = [g for g in sorted((out / "samples").glob("step-*.png")) if 0 < _grid_step(g) <= steps]
    grid = grids[-1] if grids else None
    facts = CardFacts(base=recipe.model.source, recipe_name=recipe.name, recipe_description=recipe.description or None,
                      recipe=recipe.raw or recipe.to_dict(), steps=steps, final_loss=final_loss, grid=grid,
                      grid_step=_grid_step(grid) if grid else None, trigger=trigger)
    return [write_model_card(f, facts) for f in outputs if f.is_dir() and (f / CONFIG_NAME).is_file()]


def _grid_step(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1  # not a step-N.png grid of ours
