"""The skip-connection layout of a diffusers `UNet2DConditionModel`.

Discovered from the model's modules, never hard-coded per base: the skips are
`conv_in`'s output, then for each down block the output of every resnet
followed by its downsampler's output (if any). Up block `i` consumes the last
`len(up_block.resnets)` skips still unconsumed, passed to it as the keyword
argument `res_hidden_states_tuple` in encoder order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from torch import nn

from ..errors import SceditError


@dataclass(frozen=True)
class SkipLayout:
    """Channels and strides of each skip (encoder order) and how up blocks consume them."""

    channels: tuple[int, ...]
    # Spatial downscale of each skip relative to the latent (1, 2, 4, ...).
    downscale: tuple[int, ...]
    # For each up block, the encoder indices of the skips it receives, in the
    # order they appear in its `res_hidden_states_tuple`.
    up_block_skips: tuple[tuple[int, ...], ...]

    @property
    def num_skips(self) -> int:
        return len(self.channels)

    def decoder_to_encoder(self, j: int) -> int:
        """Paper index j (the j-th decoder layer) -> encoder index of its skip."""
        return self.num_skips - 1 - j

    def fingerprint(self) -> str:
        """A short hash that identifies the layout; tuner files record it."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        """How errors name a layout: `12 skips, channels [...] (layout <fingerprint>)`."""
        return f"{self.num_skips} skips, channels {list(self.channels)} (layout {self.fingerprint()})"

    def to_dict(self) -> dict:
        return {
            "channels": list(self.channels),
            "downscale": list(self.downscale),
            "up_block_skips": [list(s) for s in self.up_block_skips],
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SkipLayout":
        return cls(
            channels=tuple(data["channels"]),
            downscale=tuple(data["downscale"]),
            up_block_skips=tuple(tuple(s) for s in data["up_block_skips"]),
        )

    @classmethod
    def from_unet(cls, unet: nn.Module) -> "SkipLayout":
        for name in ("conv_in", "down_blocks", "up_blocks"):
            if not hasattr(unet, name):
                raise SceditError(
                    f"model {type(unet).__name__} has no `{name}`: SCEdit needs a diffusers "
                    "UNet2DConditionModel (or a model with the same down/up block layout)"
                )
        channels: list[int] = [unet.conv_in.out_channels]
        downscale: list[int] = [1]
        scale = 1
        for block in unet.down_blocks:
            for resnet in block.resnets:
                channels.append(resnet.out_channels)
                downscale.append(scale)
            for down in getattr(block, "downsamplers", None) or []:
                scale *= 2
                channels.append(down.out_channels)
                downscale.append(scale)
        remaining = list(range(len(channels)))
        groups: list[tuple[int, ...]] = []
        for block in unet.up_blocks:
            n = len(block.resnets)
            if n > len(remaining):
                raise SceditError(
                    f"U-Net layout not understood: up blocks consume more than the {len(channels)} skips "
                    "the down blocks produce"
                )
            groups.append(tuple(remaining[-n:]))
            del remaining[-n:]
        if remaining:
            raise SceditError(
                f"U-Net layout not understood: {len(remaining)} skip(s) are never consumed by an up block"
            )
        return cls(tuple(channels), tuple(downscale), tuple(groups))
