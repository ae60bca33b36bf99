"""Each training method's settings: a recipe's [method] table, and the one registry of method names.

Plain dataclasses without torch (peft keeps its `LoraConfig` apart from the layers the same
way), so `load_recipe` checks a [method] table in full before torch loads. `check()` refuses
settings no base model can take; what needs the model (skip indices, layer names) is checked when
the method is set up.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from ..errors import SceditError, SettingError
from ..tuners.config import CSCSettings, SCTunerConfig

# DESIGN.md section 4: LoRA on the attention projections and the feed-forward.
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


@dataclass
class MethodConfig:
    """Settings shared by every method (none); each method extends it. `method` is the name a
    recipe's `[method] name` gives."""

    method: ClassVar[str] = ""

    def check(self) -> None:
        pass

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ConditionalConfig(MethodConfig):
    """Settings of a method that takes condition images (at most `max_conditions`)."""

    max_conditions: ClassVar[int] = 1
    conditions: list[str] = field(default_factory=lambda: ["canny"])

    def check(self) -> None:
        conds = list(self.conditions or [])
        if not conds:
            raise SettingError("conditions", f"method {self.method!r} needs at least one condition")
        if len(conds) > self.max_conditions:
            raise SettingError(
                "conditions", f"method {self.method!r} takes {self.max_conditions} condition(s), got {len(conds)} "
                f"({', '.join(conds)}); use method 'csc' for several conditions"
            )
        if len(set(conds)) != len(conds):
            raise SettingError("conditions", f"lists a condition twice: {conds}")


@dataclass
class CSCConfig(CSCSettings, ConditionalConfig):
    """The CSC-Tuner's settings (`tuners.config.CSCSettings`, as its file records them), one tuner per
    condition; weights: alpha per condition (Eq. 7, sum 1; default equal)."""

    method: ClassVar[str] = "csc"
    max_conditions: ClassVar[int] = 8
    weights: list[float] | None = None

    def check(self) -> None:
        CSCSettings.check(self)
        ConditionalConfig.check(self)
        w = self.weights
        if w is not None:
            if len(w) != len(self.conditions):
                raise SettingError(
                    "weights", f"{len(w)} value(s) for {len(self.conditions)} condition(s); give one alpha per condition"
                )
            if abs(sum(w) - 1.0) > 1e-6:
                raise SettingError("weights", f"must sum to 1 (paper Eq. 7), got {sum(w)}")


@dataclass
class FullConfig(MethodConfig):
    method: ClassVar[str] = "full"


def check_lora(rank: int, dropout: float = 0.0) -> None:
    if rank < 1:
        raise SettingError("rank", f"must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise SettingError("dropout", f"must be in [0, 1), got {dropout}")


@dataclass
class LoRASettings:
    """The LoRA layers' settings (`lora` and `controllora`): rank r; alpha (0 = rank, i.e. scale 1);
    targets: module name suffixes."""

    rank: int = 64
    alpha: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


@dataclass
class LoRAConfig(LoRASettings, MethodConfig):
    method: ClassVar[str] = "lora"
    dropout: float = 0.0

    def check(self) -> None:
        check_lora(self.rank, self.dropout)


@dataclass
class ControlNetConfig(ConditionalConfig):
    method: ClassVar[str] = "controlnet"


@dataclass
class T2IAdapterConfig(ConditionalConfig):
    """channels: per-level channels (None = the U-Net's block_out_channels, as the paper)."""

    method: ClassVar[str] = "t2i-adapter"
    channels: list[int] | None = None
    num_res_blocks: int = 2

    def check(self) -> None:
        super().check()
        if self.channels is not None and any(c < 1 for c in self.channels):
            raise SettingError("channels", f"must be >= 1 each, got {self.channels}")
        if self.num_res_blocks < 1:
            raise SettingError("num_res_blocks", f"must be >= 1, got {self.num_res_blocks}")


@dataclass
class ControlNetXSConfig(ConditionalConfig):
    """size_ratio: adapter width relative to the U-Net (the paper does not give it; 0.21 ~ its 55.30M)."""

    method: ClassVar[str] = "controlnet-xs"
    size_ratio: float = 0.21

    def check(self) -> None:
        super().check()
        if not 0 < self.size_ratio <= 1:
            raise SettingError("size_ratio", f"must be in (0, 1], got {self.size_ratio}")


@dataclass
class ControlLoRAConfig(LoRASettings, ConditionalConfig):
    method: ClassVar[str] = "controllora"
    rank: int = 55  # ControlLoRA's size in the paper (21.52M), see methods/controllora.py

    def check(self) -> None:
        super().check()
        check_lora(self.rank)


# The registry of method names, in the order help texts list them; `methods.get_method_class`
# finds each name's implementation in the module of the same name (`t2i-adapter`: `t2i_adapter.py`).
METHOD_CONFIGS: dict[str, type] = {
    c.method: c
    for c in (SCTunerConfig, CSCConfig, FullConfig, LoRAConfig, ControlNetConfig, T2IAdapterConfig,
              ControlNetXSConfig, ControlLoRAConfig)
}


@contextlib.contextmanager
def as_recipe_keys(where: str | Path | None = None):
    """A `SettingError` raised inside, named as a recipe names the setting: `where: method.<key>: ...`
    (where a setting is checked against the model, at `method.setup`, as when the recipe is read)."""
    try:
        yield
    except SettingError as e:
        raise SceditError(f"{f'{where}: ' if where else ''}method.{e.key}: {e.detail}") from None


def method_config_class(name: str) -> type:
    if name not in METHOD_CONFIGS:
        raise SceditError(f"unknown method {name!r}; choose one of {', '.join(METHOD_CONFIGS)}")
    return METHOD_CONFIGS[name]


def make_method_config(name: str, settings: dict | None = None):
    """Method `name`'s config from a dict of settings (unknown keys are an error); `check()` it, or
    let `build_method` do so."""
    cls = method_config_class(name)
    settings = dict(settings or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SceditError(f"method {name!r} has no setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**settings)
