"""accelerate owns distribution: the Accelerator, the one module it prepares, gradient sync.

The trainable module(s) of a method, the optimizer and the LR schedule go through
`accelerator.prepare`; micro-batches run under `accelerator.accumulate` and
`accelerator.backward`, so under DDP the gradients are averaged by DDP's bucketed
all-reduce while backward runs (and only on the last micro-batch of a step), and
under FSDP / DeepSpeed the same calls shard. The DataLoader is not prepared: our
sampler already splits the stream by rank and seeds it (see samplers.py).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import SceditError
from .step import forward_loss, unique_modules


def make_accelerator(r, project_dir):
    """One Accelerator per `train()`, from public arguments only.

    Precision stays ours (`mixed_precision="no"` here; the step autocasts and keeps its own fp16
    GradScaler, whose state the checkpoint holds): accelerate's process-wide state refuses a second
    Accelerator of another precision, and library users call `train()` many times in one process.
    The gradient-accumulation plugin is made afresh by each Accelerator, so each run's
    `train.gradient_accumulation_steps` holds. The schedule steps once per optimizer step
    (`step_scheduler_with_optimizer=False`: accelerate would otherwise step it once per process).
    """
    from accelerate import Accelerator
    acc = Accelerator(
        mixed_precision="no",
        gradient_accumulation_steps=r.train.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
        log_with="tensorboard" if r.logging.tensorboard else None,
        project_dir=str(project_dir),
    )
    if is_sharded(acc) and r.train.mixed_precision == "fp16":
        raise SceditError(f"train.mixed_precision = 'fp16' under {acc.distributed_type.value}: the fp16 loss scaler "
                          "does not see sharded gradients whole; use train.mixed_precision = 'bf16' (or 'no')")
    if is_sharded(acc) and r.train.ema_decay:
        raise SceditError(f"train.ema_decay = {r.train.ema_decay} under {acc.distributed_type.value}: the EMA keeps "
                          "whole copies of sharded weights; set train.ema_decay = 0 or train with DDP")
    return acc


def is_sharded(acc) -> bool:
    """Whether the trainable weights are split across processes (FSDP, DeepSpeed)."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


class TrainableModel(nn.Module):
    """The one module accelerate prepares; its forward is the method's loss on a batch.

    Its registered parameters are the method's trainable ones and nothing else: the frozen
    U-Net / VAE / text encoders stay outside, so DDP neither broadcasts nor buckets them. Under
    DDP the trainable parameters are registered one by one (a LoRA's U-Net holds frozen weights
    too); under FSDP / DeepSpeed the trainable modules are registered whole, since sharding
    replaces a module's parameters in place and the method must run the sharded ones.
    """

    def __init__(self, method, noise_scheduler, prediction_type: str, autocast_dtype, loss_options,
                 whole_modules: bool = False):
        super().__init__()
        self.method = method  # not an nn.Module: not registered
        self.noise_scheduler, self.prediction_type = noise_scheduler, prediction_type
        self.autocast_dtype, self.loss_options = autocast_dtype, loss_options
        if whole_modules:
            self.parts = nn.ModuleList(unique_modules(method.trainable_modules()))
        else:
            self.params = nn.ParameterList(method.trainable_parameters())
        # Our names (method.state_dict's) for this module's state-dict keys, to save gathered weights.
        ours = {id(p): n for n, p in method.named_trainable_parameters()}
        self.method_names = {k: ours[id(p)] for k, p in self.named_parameters() if id(p) in ours}

    def forward(self, batch, generator=None) -> torch.Tensor:
        """The batch's loss; `batch=None` (an empty micro-batch): a zero loss that reaches every
        trainable parameter, so each process takes part in the step's gradient sync."""
        if batch is None:
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        return forward_loss(self.method, self.noise_scheduler, self.prediction_type, batch, generator,
                            self.autocast_dtype, self.loss_options)



def gathered_weights(acc, model) -> dict | None:
    """The method's trainable weights, whole, under our names (`method.state_dict`'s), on the main
    process; None on the others. A collective under FSDP / DeepSpeed: every process calls it."""
    state = acc.get_state_dict(model)
    if not acc.is_main_process:
        return None
    names = acc.unwrap_model(model).method_names
    return {names[k]: v for k, v in state.items() if k in names}


@contextlib.contextmanager
def whole_weights(method, weights: dict):
    """For the duration, the method's modules hold `weights` (whole tensors, our names) as their
    trainable parameters, so `method.save` / `method.state_dict` read whole weights where sharding
    left each process a part; the sharded parameters are put back after."""
    wanted = {id(p): n for n, p in method.named_trainable_parameters()}
    swapped = []
    for module in unique_modules(method.trainable_modules()):
        for sub in module.modules():
            for attr, p in list(sub._parameters.items()):
                if p is not None and id(p) in wanted:
                    full = weights[wanted[id(p)]].to(device="cpu", dtype=torch.float32)
                    sub._parameters[attr] = nn.Parameter(full, requires_grad=p.requires_grad)
                    swapped.append((sub, attr, p))
    try:
        yield
    finally:
        for sub, attr, p in swapped:
            sub._parameters[attr] = p
