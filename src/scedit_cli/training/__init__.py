"""Training: `train()` (`loop.py`; the run in `run.py`, one step in `step.py`, accelerate in
`distributed.py`), checkpoints, logging and validation.

    from scedit_cli.training import train
    result = train("recipes/table1-scedit.toml", overrides=["train.max_steps=10"], resume="latest")

The names below are imported on first use (PEP 562), so `scedit train` can check a recipe and its output
folder (`rundir.py`, `checkpoint_files.py`) before torch loads.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# name -> the submodule that defines it
_EXPORTS = {
    "StepBatch": "step",
    "TrainResult": "loop",
    "TrainingParts": "step",
    "compute_loss": "step",
    "make_noise_scheduler": "step",
    "optimizer_step": "step",
    "prepare_training": "step",
    "train": "loop",
    "training_step": "step",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
