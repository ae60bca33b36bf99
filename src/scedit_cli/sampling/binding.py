"""Which condition image feeds which CSC-Tuner, and the checks that go with it. Needs no torch: a sampling
run plans its images from the tuners' config files (`TunerFacts`) before anything loads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SceditError
from ..tuners.files import read_tuner_meta
from .controls import ControlSpec, known_condition_names


@dataclass(frozen=True)
class TunerCondition:
    condition: str | None


@dataclass(frozen=True)
class TunerFacts:
    """A tuner as its config file describes it, with the attributes of a loaded tuner that binding reads."""

    method: str
    config: TunerCondition
    source_path: str

    @classmethod
    def read(cls, source: str | Path) -> "TunerFacts":
        meta, _ = read_tuner_meta(Path(source))
        return cls(meta["method"], TunerCondition((meta.get("config") or {}).get("condition")), str(source))


def is_csc(tuner) -> bool:
    """Whether `tuner` (a tuner object or its `TunerFacts`) is a CSC-Tuner, which takes condition images."""
    return tuner.method == "csc"


def tuner_facts(tuners: Sequence) -> list:
    """`TunerFacts` for tuner folders and files (resolved paths), tuner objects as they are; refuses what
    `load_tuners` would refuse for its config alone (not a tuner, two tuners for one condition)."""
    facts = [TunerFacts.read(t) if isinstance(t, (str, os.PathLike)) else t for t in tuners]
    check_one_tuner_per_condition(facts)
    return facts


def check_one_tuner_per_condition(tuners: Sequence) -> None:
    conds = [t.config.condition for t in tuners if is_csc(t)]
    dup = sorted({c for c in conds if conds.count(c) > 1})
    if dup:
        raise SceditError(
            f"several CSC-Tuners are trained for the same condition {dup[0]!r}; "
            "pass one tuner per condition (so each --control finds its tuner)"
        )


def bind_controls(tuners: Sequence, controls: Sequence[ControlSpec], allow_repeats: bool = False,
                  provided: set[int] = frozenset()) -> dict[int, list[int]]:
    """For each CSC-Tuner (by position), the indices of the controls that feed it; those in `provided` (every
    prompt has its own image) may have none. `tuners`: tuner objects or their `TunerFacts`."""
    csc = {i: t.config.condition for i, t in enumerate(tuners) if is_csc(t)}
    loaded = sorted(set(csc.values()))
    binding: dict[int, list[int]] = {i: [] for i in csc}
    for k, spec in enumerate(controls):
        match = [i for i, c in csc.items() if c == spec.name]
        if not match and spec.name == "outpaint":  # an inpainting tuner outpaints too (paper Fig. 10)
            match = [i for i, c in csc.items() if c == "inpaint"]
        if not match:
            known = known_condition_names()
            if spec.name not in known and spec.name not in loaded:
                raise SceditError(
                    f"--control {spec.name}:...: unknown condition {spec.name!r}; known conditions: "
                    f"{', '.join(known)}"
                )
            raise SceditError(
                f"--control {spec.name}:{spec.path}: no loaded CSC-Tuner was trained for {spec.name!r} "
                f"(loaded: {', '.join(loaded) or 'none'}); add its tuner with --tuner"
            )
        binding[match[0]].append(k)
    for i, ks in binding.items():
        name = csc[i]
        if not ks and i not in provided:
            raise SceditError(
                f"CSC-Tuner {tuners[i].source_path or i} needs a {name!r} condition image: "
                f"pass --control {name}:IMAGE (or --control-map {name}:MAP), or give every prompt its own "
                f"(`control_map` in a .jsonl prompts file)"
            )
        if len(ks) > 1 and not allow_repeats:
            raise SceditError(
                f"{len(ks)} condition images given for {name!r}; `scedit sample` takes one per condition "
                "(use `scedit compose` for several maps of one condition)"
            )
    repeated = [i for i, ks in binding.items() if len(ks) > 1]
    if len(repeated) > 1:
        raise SceditError(
            "only one condition may be given several images (one image per variant, Fig. 9a); got several for "
            + ", ".join(repr(csc[i]) for i in repeated)
        )
    return binding
