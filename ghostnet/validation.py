"""Validators for the Ghost hyper-parameters (ratio s, cheap kernel size d), shared by ``ghostnet`` and
``analysis``: one definition, one message naming the input and the fix."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["GhostConfigError", "check_odd_size", "check_ratio", "is_int"]


class GhostConfigError(ValueError):
    """A bad Ghost layer setting (ratio, kernel size, channel order). The message names the input and the fix."""


def is_int(value: Any) -> bool:
    """True for an integral number that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_ratio(value: Any, name: str = "ratio", error: type[Exception] = GhostConfigError) -> int:
    """``value`` as an int >= 2 (the Ghost ratio s), else ``error`` naming ``name``."""
    if not is_int(value) or value < 2:
        raise error(f"{name} must be an int >= 2 (s in the paper: a Ghost module makes 1/s of the maps with its "
                    f"primary conv and s-1 ghosts of each; ratio 1 is the plain conv); got {value!r}, use e.g. 2")
    return int(value)


def check_odd_size(value: Any, name: str = "d", error: type[Exception] = GhostConfigError) -> int:
    """``value`` as a positive odd int (the cheap depthwise kernel size d), else ``error`` naming ``name``."""
    if not is_int(value) or value < 1 or value % 2 == 0:
        raise error(f"{name} must be a positive odd int (the cheap op is a d x d depthwise conv with padding d//2, "
                    f"which keeps the map size only for odd d); got {value!r}, use e.g. 3 (the paper's d), 1, 5 "
                    f"or 7")
    return int(value)
