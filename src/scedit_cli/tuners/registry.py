"""The tuner types a tuner file can hold, by method name."""

from __future__ import annotations

from .csc import CSCTuner, CSCTunerConfig
from .sc import SCTuner, SCTunerConfig

TUNER_TYPES = {
    "sc": (SCTunerConfig, SCTuner),
    "csc": (CSCTunerConfig, CSCTuner),
}


def build_tuner(method: str, config: dict, layout):
    from ..errors import SceditError

    if method not in TUNER_TYPES:
        raise SceditError(f"unknown tuner method {method!r}; choose one of {', '.join(TUNER_TYPES)}")
    config_cls, tuner_cls = TUNER_TYPES[method]
    return tuner_cls(config_cls.from_dict(dict(config)), layout)
