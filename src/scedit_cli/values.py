"""Numbers read from users: options, recipes, prompt files and condition settings.

Python's `float()`, TOML and JSON all accept `nan` and `inf`; none of scedit's numbers means anything
then (a NaN guidance scale silently makes black images and lands in the manifest), so every number a
user gives goes through `finite_float`.
"""

from __future__ import annotations

import math


def finite_float(value: str | float | int) -> float:
    """`value` as a float; `ValueError` for text that is not a number and for NaN or +-inf.

    Also the `parser=` of every float option of the CLI: click names the option in the error.
    """
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number (NaN and infinity are refused)")
    return number
