"""The ComfyUI nodes: SCEdit Tuner (an SC-Tuner on a MODEL) and SCEdit Control (a CSC-Tuner with its image).

Both return a clone of the MODEL that carries the tuner (see `patch.py`); chains of them stack, with
several Control nodes weighted by Eq. 7. Errors are one-line `SceditError`s, which ComfyUI shows on the
node that raised them.
"""

from __future__ import annotations

from ..errors import SceditError
from ..tuners import CSCTuner, SkipTuner
from ..tuners.hub import resolve_tuner_source
from . import model as comfy_model
from .hints import image_to_condition
from .loader import folder_paths_module, load_for_model, register_folder, resolve_name, tuner_choices
from .patch import ControlEntry, TunerEntry, with_entry

CATEGORY = "scedit"
HUB_ID_TOOLTIP = ("Optional Hugging Face Hub id of a tuner, user/repo[/sub/folder][@revision]; when set it is used "
                  "instead of `tuner` (read from the HF cache when offline).")
_TUNER_KINDS = ("a scedit tuner (folder or .safetensors from `scedit train` / `scedit convert`) or an official "
                "SCEdit checkpoint")


def _tuner_input() -> tuple:
    choices = tuner_choices()
    if choices is None:  # outside ComfyUI: no model folders to list
        return ("STRING", {"default": "", "tooltip": f"Path to {_TUNER_KINDS}."})
    return (choices, {"tooltip": f"{_TUNER_KINDS[0].upper()}{_TUNER_KINDS[1:]}, from ComfyUI's models/scedit/."})


def _load(model, name: str, hub_id: str = "") -> tuple[SkipTuner, str]:
    """The tuner a node names (a Hub id, when given, wins over the file list) and the name to report."""
    layout = comfy_model.skip_layout(model)
    hub_id = hub_id.strip()
    source = resolve_tuner_source(hub_id) if hub_id else resolve_name(name)
    name = hub_id or name
    tuner = load_for_model(source, layout, comfy_model.latent_factor(model))
    comfy_model.check_layout(tuner, layout, name)
    comfy_model.warn_if_other_base(tuner, model, name)
    return tuner, name


class _Node:
    """What both nodes share: a MODEL and a tuner in, a MODEL out."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"

    @staticmethod
    def required(**inputs) -> dict:
        return {"required": {"model": ("MODEL",), "tuner": _tuner_input(), **inputs},
                "optional": {"hub_id": ("STRING", {"default": "", "tooltip": HUB_ID_TOOLTIP})}}


class SCEditTuner(_Node):
    """An SC-Tuner (style / text-to-image tuning) applied to a MODEL."""

    DESCRIPTION = "Applies an SCEdit SC-Tuner to the model's U-Net skip connections (SD 1.x, 2.x, SDXL)."

    @classmethod
    def INPUT_TYPES(cls):
        return cls.required(strength=("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                                "tooltip": "Weight of the tuner's edit: 0 off, 1 as trained."}))

    def apply(self, model, tuner, strength, hub_id=""):
        if strength == 0:
            return (model,)
        loaded, tuner = _load(model, tuner, hub_id)
        if isinstance(loaded, CSCTuner):
            raise SceditError(
                f"SCEdit Tuner: {tuner} is a CSC-Tuner for {loaded.config.condition!r} control; it needs a condition "
                "image: use the SCEdit Control node"
            )
        return (with_entry(model, TunerEntry(loaded, strength, tuner)),)


class SCEditControl(_Node):
    """A CSC-Tuner (controllable generation) applied to a MODEL with its condition image."""

    DESCRIPTION = ("Conditions the model on an image (canny, depth, colour, ...) with an SCEdit CSC-Tuner. "
                   "Several in a chain are weighted by their strengths, normalised (the paper's Eq. 7).")

    @classmethod
    def INPUT_TYPES(cls):
        return cls.required(
            image=("IMAGE", {"tooltip": "The condition map (e.g. from Canny), fitted to the image size as "
                                        "ControlNet fits its image."}),
            strength=("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
            start_percent=("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            end_percent=("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        )

    def apply(self, model, tuner, image, strength, start_percent, end_percent, hub_id=""):
        if image is None:
            raise SceditError(f"SCEdit Control: the CSC-Tuner {tuner} needs a condition image: connect an IMAGE")
        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise SceditError(
                f"SCEdit Control: start_percent {start_percent} and end_percent {end_percent} must satisfy "
                "0 <= start <= end <= 1"
            )
        if strength == 0:
            return (model,)
        loaded, tuner = _load(model, tuner, hub_id)
        if not isinstance(loaded, CSCTuner):
            raise SceditError(f"SCEdit Control: {tuner} is an SC-Tuner (no condition input); use the SCEdit Tuner node")
        factor = comfy_model.latent_factor(model)
        if loaded.config.hint_downscale != factor:
            raise SceditError(
                f"SCEdit Control: {tuner}'s hint encoder downsamples {loaded.config.hint_downscale}x but this "
                f"model's latents are 1/{factor} of the image: use a tuner trained for this base model"
            )
        cond = image_to_condition(image, loaded.config.in_channels, tuner)
        percents = None if (start_percent, end_percent) == (0.0, 1.0) else (start_percent, end_percent)
        return (with_entry(model, ControlEntry(loaded, strength, tuner, cond, percents, model.model, factor)),)


NODE_CLASS_MAPPINGS = {"SCEditTuner": SCEditTuner, "SCEditControl": SCEditControl}
NODE_DISPLAY_NAME_MAPPINGS = {"SCEditTuner": "SCEdit Tuner", "SCEditControl": "SCEdit Control"}

# Inside ComfyUI, models/scedit is one of its model folders from the moment the nodes load.
if (_fp := folder_paths_module()) is not None:
    register_folder(_fp)
