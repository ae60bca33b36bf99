"""`scedit quickstart`: the whole SCEdit story on the shipped toy base, offline, on a CPU.

Stages (each one the library function a CLI command wraps, no special paths):

1. data     `toy.make_dataset`: a style set (a style the base never saw, `<sce>`
            captions) and a control set (canny + colour maps, shapes jittered
            off the named position so the maps carry information the prompt
            does not);
2. train    `train()` on the recipes in `assets/quickstart/` (= `scedit train`):
            canny (CSC-Tuner) here; style (SC-Tuner), colour (CSC-Tuner) and then
            `sample()` before/after the SC-Tuner (= `scedit sample`) in a second
            process at the same time (`jobs.py`);
3. control  `sample()` with each CSC-Tuner and `compose()` with a
            3-step weight sweep (1,0) (.5,.5) (0,1)  = `scedit sample` / `scedit compose`;
4. report   analytic toy scores (`toy.score`), `report.md` + `report.json`.

Scores are computed from the pixels (`scedit_cli.toy.score`): colour / shape /
position / background accuracy, the style score, edge F1 of the generated
image's canny edges against the condition, and the colour-map error. The style
score is also measured on the base VAE's reconstruction of real images of the
style (`vae_ceiling`): a U-Net-side tuner cannot draw what the VAE cannot decode.
"""

from .evaluate import add_color_maps, vae_ceiling
from .report import render_markdown, summary_rows
from .run import prepare_output, run_quickstart
from .settings import (COLOR_RATIO, CONDITIONS, CONTROL_CAPTION_POSITIONS, CONTROL_JITTER, STAGES, STYLES,
                       QuickstartResult, QuickstartSettings, recipe_path)

__all__ = ["COLOR_RATIO", "CONDITIONS", "CONTROL_CAPTION_POSITIONS", "CONTROL_JITTER", "STAGES", "STYLES",
           "QuickstartResult", "QuickstartSettings", "add_color_maps", "prepare_output", "recipe_path",
           "render_markdown", "run_quickstart", "summary_rows", "vae_ceiling"]
