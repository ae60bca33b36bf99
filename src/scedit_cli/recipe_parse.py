"""Reading a recipe's TOML into typed dataclasses: type checks with errors that name the file (or the
`--set`) and the dotted key, `--set KEY=VALUE` overrides, and paths relative to the recipe."""

from __future__ import annotations

import difflib
import sys
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import SceditError
from .fsutil import looks_like_path
from .values import finite_float


def type_name(tp) -> str:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"a list of {type_name(get_args(tp)[0])}s"
    if origin is dict:
        return f"a table of {type_name(get_args(tp)[1])}s"
    return {str: "string", int: "integer", float: "number", bool: "boolean (true/false)"}.get(tp, str(tp))


def coerce(value, tp):
    """`value` as type `tp`, or raise TypeError (ValueError for NaN and infinities)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in (a for a in get_args(tp) if a is not type(None)):
            try:
                return coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is list:
        if not isinstance(value, list):
            raise TypeError
        return [coerce(v, get_args(tp)[0]) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError
        return {str(k): coerce(v, get_args(tp)[1]) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return finite_float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    raise TypeError


class RecipeContext:
    """Where a recipe key came from (the file or a --set), for errors that name it."""

    def __init__(self, path: Path | None, overridden: set[str]):
        self.path = path
        self.overridden = overridden

    def where(self, key: str) -> str:
        src = str(self.path) if self.path else "recipe"
        if key in self.overridden:
            return f"{src}: --set {key}"
        return f"{src}: {key}"

    def error(self, key: str, message: str) -> SceditError:
        return SceditError(f"{self.where(key)}: {message}")


def suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def build_section(cls, data: dict, section: str, ctx: RecipeContext, required: set = frozenset()):
    if not isinstance(data, dict):
        raise ctx.error(section, f"must be a table ([{section}]), got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            raise ctx.error(
                f"{section}.{key}",
                f"unknown key; {suggest(key, known)}[{section}] accepts: {', '.join(known)}",
            )
    kwargs = {}
    for name, f in known.items():
        dotted = f"{section}.{name}"
        if name not in data:
            if (section, name) in required:
                raise ctx.error(dotted, f"missing; add `{name} = ...` to [{section}]")
            if f.default is MISSING and f.default_factory is MISSING:
                raise ctx.error(dotted, f"missing; add `{name} = ...` to [{section}]")
            continue
        try:
            kwargs[name] = coerce(data[name], hints[name])
        except TypeError:
            raise ctx.error(
                dotted, f"must be {type_name(hints[name])}, got {data[name]!r} ({type(data[name]).__name__})"
            ) from None
        except ValueError as e:  # nan, inf: TOML has both
            raise ctx.error(dotted, str(e)) from None
    return cls(**kwargs)


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise SceditError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.max_steps=100")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise SceditError(f"--set {item!r}: the key must be a dotted path such as train.learning_rate")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare string, e.g. --set data.source=./my-data
    return key, value


def apply_overrides(raw: dict, overrides: list[str] | dict | None) -> set[str]:
    """Set each dotted key in `raw` (in place); returns the keys set."""
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    done = set()
    for key, value in items:
        parts = key.split(".")
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise SceditError(f"--set {key}: {p} is not a table")
            node = nxt
        node[parts[-1]] = value
        done.add(key)
    return done


def resolve_source(value: str, base_dir: Path) -> str:
    """A path (absolute, or relative to `base_dir`) when it names one; otherwise a hub id, unchanged."""
    if not value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = (base_dir / p)
    if candidate.exists() or looks_like_path(value):
        return str(candidate.resolve())
    return value


def resolve_path(value: str, base_dir: Path) -> str:
    if not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())
