"""The settings of SC- and CSC-Tuners: what a recipe's [method] table and a tuner file's
`tuner_config.json` hold.

Plain dataclasses without torch, so a recipe's mistakes are reported before torch loads
(`scedit train` checks them in well under a second). `check()` tests the settings on their own;
`validate(layout)` adds what needs the U-Net (the skip indices), when a tuner is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, ClassVar

from ..errors import SceditError, SettingError

if TYPE_CHECKING:
    from .layout import SkipLayout

# The tuner OPs `T_j` (built by `ops.OPS`, which has exactly these keys).
OP_NAMES = ("linear", "conv1x1", "conv3x3")

# ControlNet-style pre-hint encoder: channels after each 3x3 conv. The convs
# that reduce resolution are the ones that change channel count (16->32,
# 32->96, 96->256); with a smaller `hint_downscale` the last ones keep stride 1.
PRE_HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)
# The official SDXL controllers (scepter `sdxl_1024_sce_ctr_*.yaml`) widen the
# inner convs (PRE_HINT_DIM_RATIO 2) and end at 320 channels
# (PRE_HINT_OUT_CHANNELS); the SD 1.5 / 2.1 ones use width 1 and 256.
SDXL_PRE_HINT = (2.0, 320)
SD_PRE_HINT = (1.0, PRE_HINT_CHANNELS[-1])


def pre_hint_channels(dim_ratio: float = 1.0, out_channels: int = PRE_HINT_CHANNELS[-1]) -> tuple[int, ...]:
    """Output channels of the 7 pre-hint convs (scepter: int(c * PRE_HINT_DIM_RATIO), last one given)."""
    return tuple(int(c * dim_ratio) for c in PRE_HINT_CHANNELS[:-1]) + (out_channels,)


def default_pre_hint(is_sdxl: bool) -> tuple[float, int]:
    """(pre_hint_dim_ratio, pre_hint_out_channels) of the official controllers for this kind of base."""
    return SDXL_PRE_HINT if is_sdxl else SD_PRE_HINT


@dataclass
class TunerConfig:
    """Hyperparameters shared by SC- and CSC-Tuners.

    `skips` are paper indices j (the j-th decoder layer, fed by encoder skip
    N-1-j); None tunes every skip.
    """

    method: ClassVar[str] = ""
    ratio: float = 1.0
    op: str = "linear"
    skips: list[int] | None = None

    def check(self) -> None:
        """Refuse settings that no U-Net can take (the layout-free half of `validate`)."""
        if self.ratio <= 0:
            raise SettingError("ratio", f"must be > 0, got {self.ratio}")
        if self.op not in OP_NAMES:
            raise SettingError("op", f"unknown tuner op {self.op!r}; choose one of {', '.join(OP_NAMES)}")
        negative = [j for j in self.skips or [] if j < 0]
        if negative:
            raise SettingError("skips", f"indices count from 0 (the first decoder layer), got {negative[0]}")

    def validate(self, layout: SkipLayout) -> None:
        self.check()
        for j in self.skips or []:
            if j >= layout.num_skips:
                raise SettingError(
                    "skips", f"index {j} out of range: this U-Net has {layout.num_skips} skips (0..{layout.num_skips - 1})"
                )

    def decoder_indices(self, layout: SkipLayout) -> list[int]:
        return sorted(set(self.skips)) if self.skips is not None else list(range(layout.num_skips))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TunerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SceditError(
                f"unknown {cls.method} tuner setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)


@dataclass
class SCTunerConfig(TunerConfig):
    """SC-Tuner settings. Defaults are the paper's: Linear OP, ratio 1, all skips."""

    method: ClassVar[str] = "sc"


@dataclass
class CSCSettings(TunerConfig):
    """What a user chooses for a CSC-Tuner (a recipe's [method] and the tuner file share these).
    `hint_kernel` is the dense-cascade kernel k (paper: 1 or 3). `pre_hint_dim_ratio` /
    `pre_hint_out_channels`: the pre-hint encoder's width multiplier and output channels (official SD
    configs 1.0 / 256, SDXL 2.0 / 320; None in a recipe: the base's, `default_pre_hint`)."""

    hint_kernel: int = 3
    pre_hint_dim_ratio: float | None = None
    pre_hint_out_channels: int | None = None

    def settings(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(CSCSettings)}

    def check(self) -> None:
        TunerConfig.check(self)
        if self.hint_kernel < 1 or self.hint_kernel % 2 == 0:
            raise SettingError("hint_kernel", f"must be an odd number >= 1, got {self.hint_kernel}")
        ratio = SD_PRE_HINT[0] if self.pre_hint_dim_ratio is None else self.pre_hint_dim_ratio
        out = SD_PRE_HINT[1] if self.pre_hint_out_channels is None else self.pre_hint_out_channels
        if min(pre_hint_channels(ratio, out)) < 1:
            raise SettingError(
                "pre_hint_dim_ratio", f"{self.pre_hint_dim_ratio} with pre_hint_out_channels {self.pre_hint_out_channels} "
                "leaves a pre-hint conv without channels; use a ratio >= 0.0625 and >= 1 output channel"
            )


@dataclass
class CSCTunerConfig(CSCSettings):
    """A CSC-Tuner as built: its settings, resolved for one base model and one condition.

    `hint_downscale` is the VAE's downscale factor (8 for Stable Diffusion): the
    pre-hint encoder maps the pixel-size condition to the latent size; `in_channels`
    the condition tensor's channels.
    """

    method: ClassVar[str] = "csc"
    hint_downscale: int = 8
    condition: str = "canny"
    in_channels: int = 3
    pre_hint_dim_ratio: float = SD_PRE_HINT[0]
    pre_hint_out_channels: int = SD_PRE_HINT[1]

    @classmethod
    def resolve(cls, settings: CSCSettings, *, is_sdxl: bool, hint_downscale: int, condition: str,
                in_channels: int) -> "CSCTunerConfig":
        """The tuner `settings` make on a base (SDXL or not, its VAE factor) for `condition`."""
        chosen = settings.settings()
        dim_ratio, out_channels = default_pre_hint(is_sdxl)
        if chosen["pre_hint_dim_ratio"] is None:
            chosen["pre_hint_dim_ratio"] = dim_ratio
        if chosen["pre_hint_out_channels"] is None:
            chosen["pre_hint_out_channels"] = out_channels
        return cls(**chosen, hint_downscale=hint_downscale, condition=condition, in_channels=in_channels)

    def validate(self, layout: SkipLayout) -> None:
        super().validate(layout)
        if self.hint_downscale not in (1, 2, 4, 8):
            raise SettingError("hint_downscale", f"must be 1, 2, 4 or 8 (the VAE factor), got {self.hint_downscale}")
        if self.in_channels < 1:
            raise SettingError("in_channels", f"must be >= 1, got {self.in_channels}")
