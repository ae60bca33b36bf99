"""Training: `train()` (`loop.py`; the run in `run.py`, one step in `step.py`, accelerate in
`distributed.py`), checkpoints, logging and validation.

    from scedit_cli.training import train
    result = train("recipes/table1-scedit.toml", overrides=["train.max_steps=10"], resume="latest")
"""

from .loop import (StepBatch, TrainingParts, TrainResult, compute_loss, make_noise_scheduler, optimizer_step,
                   prepare_training, train, training_step)

__all__ = ["StepBatch", "TrainResult", "TrainingParts", "compute_loss", "make_noise_scheduler", "optimizer_step",
           "prepare_training", "train", "training_step"]
