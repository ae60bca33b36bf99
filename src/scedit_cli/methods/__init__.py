"""Training methods: one registry, one small file per method family.

    from scedit_cli.methods import build_method
    method = build_method("csc", {"conditions": ["canny"], "hint_kernel": 1})
    method.setup(base); method.trainable_parameters(); method.predict(...)

See `base.Method` for the interface. The registry of names and settings is `config.py`, which
needs no torch (`load_recipe` checks a [method] table with it); a method's implementation is
imported when it is first built.
"""

from __future__ import annotations

import importlib

from ..lazy import lazy_exports
from .config import METHOD_CONFIGS, MethodConfig, make_method_config, method_config_class

# name -> the submodule that defines it (`base.Method` imports torch: only on use)
_EXPORTS = {"Method": "base"}
_lazy_getattr, __dir__ = lazy_exports(__name__, _EXPORTS)


def get_method_class(name: str):
    """Method `name`'s class (a `base.Method`), from the module of the same name."""
    method_config_class(name)  # an unknown name is refused here, before anything heavy loads
    from .base import Method

    module = importlib.import_module(f".{name.replace('-', '_')}", __name__)
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Method) and value.name == name:
            return value
    raise ImportError(f"{module.__name__} defines no Method named {name!r}")


def build_method(name: str, config: dict | MethodConfig | None = None):
    """A method from its name and settings (a dict is checked: unknown keys are an error)."""
    if config is None or isinstance(config, dict):
        config = make_method_config(name, config)
    method = get_method_class(name)(config)
    method.validate()
    return method


def __getattr__(name: str):
    if name == "METHODS":  # every implementation class by name: imports them all (torch)
        return {n: get_method_class(n) for n in METHOD_CONFIGS}
    return _lazy_getattr(name)


__all__ = ["METHODS", "METHOD_CONFIGS", "Method", "MethodConfig", "build_method", "get_method_class",
           "make_method_config", "method_config_class"]
