"""Attach tuners to a diffusers U-Net, and detach them again.

No `forward` is copied: each up block gets a forward pre-hook (with kwargs)
that rewrites its `res_hidden_states_tuple`, the skip features it is about to
concatenate. Attaching freezes the base, so nothing upstream of the skips (the
encoder, the middle block, the time embedding) records activations for
backward: backward runs through the decoder and the tuners only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import SceditError
from . import fused
from .base import SkipTuner
from .layout import SkipLayout

_ATTR = "_scedit_editor"


class SkipEditor(nn.Module):
    """The tuners attached to one U-Net and their weights alpha (Eq. 7).

    Skip j becomes `x + sum_m alpha_m * delta_m(x)`, where `delta_m` is the
    tuner's edit: `T(x)` for an SC-Tuner, `T(x + c) + c` for a CSC-Tuner.
    """

    def __init__(self, tuners: Sequence[SkipTuner], weights: Sequence[float]):
        super().__init__()
        self.tuners = nn.ModuleList(tuners)
        self.weights = [float(w) for w in weights]
        self._hooks: list = []
        self._requires_grad: dict[str, bool] = {}
        self._plans = fused.DropOnCopy()  # sampling: group of skips -> fused plan
        # Sampling: run an up block's same-shape skips as one batch (None: except on a CPU; `fused.edit`).
        self.stack_skips: bool | None = None

    def edit_block(self, skips: Sequence[int], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The skips one up block receives (encoder indices `skips`), edited; when sampling, each group of
        same-shape skips in one fused pixel MLP for all tuners (`fused.edit`)."""
        return fused.edit(self._plans, skips, xs, [(t, w, None) for t, w in zip(self.tuners, self.weights)],
                          self.stack_skips)

    def edit(self, skip: int, x: torch.Tensor) -> torch.Tensor:
        return self.edit_block((skip,), (x,))[0]

    def set_weights(self, weights: Sequence[float]) -> None:
        if len(weights) != len(self.tuners):
            raise SceditError(f"{len(weights)} weight(s) given for {len(self.tuners)} tuner(s)")
        self.weights = [float(w) for w in weights]


def _pre_hook(editor: SkipEditor, skips: tuple[int, ...]):
    def hook(module, args, kwargs):
        res = kwargs.get("res_hidden_states_tuple")
        if res is None:
            raise SceditError(
                f"{type(module).__name__} was called without `res_hidden_states_tuple` as keyword: "
                "this diffusers version is not supported by scedit"
            )
        if len(res) != len(skips):
            raise SceditError(
                f"{type(module).__name__} got {len(res)} skips, expected {len(skips)}: "
                "the U-Net does not match the layout the tuners were attached with"
            )
        kwargs["res_hidden_states_tuple"] = tuple(editor.edit_block(skips, res))
        return args, kwargs

    return hook


def get_editor(unet: nn.Module) -> SkipEditor | None:
    return unet.__dict__.get(_ATTR)


def attach(
    unet: nn.Module,
    tuners: SkipTuner | Sequence[SkipTuner],
    weights: Sequence[float] | None = None,
    freeze: bool = True,
) -> SkipEditor:
    """Attach one or more tuners to `unet`; returns the editor that holds them.

    The tuners are moved to the U-Net's device but keep their own dtype (fp32
    tuners beside a half-precision base is the intended training setup). The
    editor is kept outside the U-Net's module tree, so `unet.state_dict()` and
    `unet.parameters()` stay exactly the base's.
    """
    if isinstance(tuners, SkipTuner):
        tuners = [tuners]
    tuners = list(tuners)
    if not tuners:
        raise SceditError("attach() needs at least one tuner")
    if get_editor(unet) is not None:
        raise SceditError("this U-Net already has SCEdit tuners attached: detach them first")
    layout = SkipLayout.from_unet(unet)
    for t in tuners:
        if t.layout != layout:
            raise SceditError(
                f"{t.method} tuner was built for a U-Net with skip layout {t.layout.fingerprint()} "
                f"({t.layout.num_skips} skips, channels {list(t.layout.channels)}) but this U-Net has "
                f"{layout.fingerprint()} ({layout.num_skips} skips, channels {list(layout.channels)}): "
                "use a tuner trained for this base model"
            )
    if weights is None:
        weights = [1.0] * len(tuners)
    editor = SkipEditor(tuners, weights)
    param = next(unet.parameters(), None)
    if param is not None and param.device.type != "meta":
        editor.to(param.device)
    if freeze:
        editor._requires_grad = {n: p.requires_grad for n, p in unet.named_parameters()}
        unet.requires_grad_(False)
    for block, skips in zip(unet.up_blocks, layout.up_block_skips):
        editor._hooks.append(block.register_forward_pre_hook(_pre_hook(editor, skips), with_kwargs=True))
    unet.__dict__[_ATTR] = editor
    return editor


def detach(unet: nn.Module) -> SkipEditor:
    """Remove the tuners; the U-Net computes exactly what it did before `attach`."""
    editor = get_editor(unet)
    if editor is None:
        raise SceditError("this U-Net has no SCEdit tuners attached")
    for h in editor._hooks:
        h.remove()
    editor._hooks = []
    for name, p in unet.named_parameters():
        if name in editor._requires_grad:
            p.requires_grad_(editor._requires_grad[name])
    editor._requires_grad = {}
    del unet.__dict__[_ATTR]
    return editor
