"""What every training method supplies to the one training loop.

A method owns its trainable modules and decides how conditioning enters the
U-Net; the loop, the data, the noise and loss, checkpoints and logging are
written once (`scedit_cli.training`). The interface (kept stable, `scedit bench`
reuses it):

    method = build_method("sc", {"ratio": 1.0})
    method.setup(base)                    # attach / inject / build; freezes the base
    params = method.trainable_parameters()
    pred = method.predict(sample, timestep, encoder_hidden_states,
                          added_cond_kwargs=None, conditions=None)
    method.state_dict() / method.load_state_dict(sd)   # trainable tensors only (checkpoints)
    method.save(output_dir, base_source=...)           # final output, the method's own format

`conditions` is a list with one (B, C, H, W) tensor in [0, 1] per condition the
method was configured with, in the order of `method.conditions`, at the pixel
size of the training image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import SceditError
from .config import MethodConfig, as_recipe_keys


class Method:
    """Base class; see the module docstring for the contract."""

    Config: ClassVar[type] = MethodConfig  # its settings (`config.py`), which also name it
    name: ClassVar[str] = ""
    # True when the method trains base U-Net weights (full fine-tuning): the
    # U-Net then stays fp32 whatever the frozen dtype.
    trains_unet: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.name = cls.Config.method

    def __init__(self, config: MethodConfig):
        self.config = config
        self.base = None
        self.unet = None

    # --- facts -------------------------------------------------------------
    @property
    def conditions(self) -> list[str]:
        return list(getattr(self.config, "conditions", []) or [])

    def validate(self) -> None:
        with as_recipe_keys():
            self.config.check()

    # --- lifecycle ---------------------------------------------------------
    def setup(self, base) -> None:
        """Build the trainable modules for `base` and freeze everything else."""
        self.base = base
        self.unet = base.unet
        base.unet.requires_grad_(False)
        for m in [base.vae, *base.text_encoders]:
            if m is not None:
                m.requires_grad_(False)

    def trainable_modules(self) -> list[nn.Module]:
        """The modules holding the trainable parameters (moved to the device by the loop)."""
        raise NotImplementedError

    def extra_modules(self) -> list[nn.Module]:
        """Modules outside the base pipeline that the method runs (moved to the device too)."""
        return self.trainable_modules()

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        out = []
        for i, module in enumerate(self.trainable_modules()):
            for n, p in module.named_parameters():
                if p.requires_grad:
                    out.append((f"{i}.{n}", p))
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def train(self, mode: bool = True) -> None:
        for m in self.extra_modules():
            m.train(mode)
        if self.unet is not None:
            self.unet.train(mode)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    # --- the forward pass ----------------------------------------------------
    def predict(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        """The U-Net's prediction with this method's conditioning."""
        raise NotImplementedError

    def _unet(self, unet, sample, timestep, encoder_hidden_states, added_cond_kwargs, **kw):
        if added_cond_kwargs is not None:
            kw["added_cond_kwargs"] = added_cond_kwargs
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False, **kw)[0]

    def _single_condition(self, conditions) -> torch.Tensor:
        if not conditions:
            raise SceditError(f"method {self.name!r} needs a condition image ({', '.join(self.conditions)})")
        return conditions[0]

    # --- checkpoints ---------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_trainable_parameters()}

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        params = dict(self.named_trainable_parameters())
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise SceditError(
                f"{source}: trainable weights do not match method {self.name!r} as configured "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); resume with the recipe that wrote it"
            )
        with torch.no_grad():
            for n, p in params.items():
                if tuple(state[n].shape) != tuple(p.shape):
                    raise SceditError(
                        f"{source}: {n} has shape {tuple(state[n].shape)}, this method has {tuple(p.shape)}; "
                        "resume with the recipe that wrote it"
                    )
                p.copy_(state[n].to(p.dtype))

    def save(self, output_dir: str | Path, base_source: str | None = None, extra: dict | None = None) -> list[Path]:
        """Write the final trained weights in the method's own format; returns the paths written."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **self.config.to_dict()}
