"""The toy world: captioned shape images with exact ground truth, analytic scorers, and its tokenizer."""

from .world import (  # noqa: F401
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    TRIGGER,
    Scene,
    ToyWorld,
    all_scenes,
    canny,
    caption,
    make_dataset,
    read_metadata,
    render,
    render_array,
    sample_scene,
    scene_mask,
    vocabulary,
)
from .score import edge_f1, read_image, score_image, score_images, style_score  # noqa: F401


def base_model_path():
    """Folder of the shipped toy base model (a diffusers StableDiffusionPipeline, fp16 safetensors)."""
    from importlib.resources import files
    from pathlib import Path

    return Path(str(files("scedit_cli") / "assets" / "toy-base"))
