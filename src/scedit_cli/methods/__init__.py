"""Training methods: one registry, one small file per method family.

    from scedit_cli.methods import METHODS, build_method
    method = build_method("csc", {"conditions": ["canny"], "hint_kernel": 1})
    method.setup(base); method.trainable_parameters(); method.predict(...)

See `base.Method` for the interface.
"""

from __future__ import annotations

from dataclasses import fields

from ..errors import SceditError
from .base import Method, MethodConfig
from .controllora import ControlLoRAMethod
from .controlnet import ControlNetMethod
from .controlnet_xs import ControlNetXSMethod
from .csc import CSCMethod
from .full import FullMethod
from .lora import LoRAMethod
from .sc import SCMethod
from .t2i_adapter import T2IAdapterMethod

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (SCMethod, CSCMethod, FullMethod, LoRAMethod, ControlNetMethod, T2IAdapterMethod,
              ControlNetXSMethod, ControlLoRAMethod)
}


def get_method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise SceditError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, config: dict | MethodConfig | None = None) -> Method:
    """A method from its name and settings (a dict is checked: unknown keys are an error)."""
    cls = get_method_class(name)
    if config is None:
        config = cls.Config()
    elif isinstance(config, dict):
        known = {f.name for f in fields(cls.Config)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise SceditError(f"method {name!r} has no setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        config = cls.Config(**config)
    method = cls(config)
    method.validate()
    return method


__all__ = ["METHODS", "Method", "MethodConfig", "build_method", "get_method_class"]
