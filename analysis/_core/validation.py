"""The validators of user settings, one definition each, and the defaults they guard.

Every ``check_*`` returns the value in its normal form (an ``int``, a ``float``) or raises ``error`` (by
default ``GhostmapsError``; a caller may pass a subclass such as ``GhostifyError``) with a message naming
the input (``name``) and the fix. The Ghost hyper-parameters (ratio s, cheap kernel size d) are checked by
``ghostnet.validation`` (``ghostnet`` never imports ``analysis``); ``check_ratio`` and ``check_odd_size`` are
those, raising ``GhostmapsError`` by default.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from analysis._core.errors import GhostmapsError
from ghostnet.validation import check_odd_size as _ghost_odd_size
from ghostnet.validation import check_ratio as _ghost_ratio
from ghostnet.validation import is_int

__all__ = ["DEFAULT_LEVEL", "DEFAULT_METRIC", "DEFAULT_THRESHOLD", "LINKAGES", "METRICS", "check_count", "check_level",
           "check_linkage", "check_metric", "check_odd_size", "check_positive_int", "check_ratio",
           "check_threshold", "check_tol", "is_int", "per_layer_ratios"]

#: channel similarities: ``cosine`` (uncentred) and ``pearson`` (centred)
METRICS = ("cosine", "pearson")
#: the default: Pearson is invariant to the per-channel scale and offset the BatchNorm after a conv removes
DEFAULT_METRIC = "pearson"
#: ghost-group linkages (``analysis.measure.groups``)
LINKAGES = ("complete", "average", "single")
#: τ, the |similarity| at which two channels are ghosts of each other (scores, groups, survey, CLI)
DEFAULT_THRESHOLD = 0.9
#: confidence level of the intervals
DEFAULT_LEVEL = 0.95

Error = type[Exception]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_metric(metric: Any, name: str = "metric", error: Error = GhostmapsError) -> str:
    """``metric`` if it is one of ``METRICS``."""
    if not isinstance(metric, str) or metric not in METRICS:
        raise error(f"unknown {name} {metric!r}; use one of {', '.join(METRICS)}.")
    return metric


def check_linkage(linkage: Any, name: str = "linkage", error: Error = GhostmapsError) -> str:
    """``linkage`` if it is one of ``LINKAGES``."""
    if not isinstance(linkage, str) or linkage not in LINKAGES:
        raise error(f"unknown {name} {linkage!r}; use one of {', '.join(LINKAGES)}.")
    return linkage


def check_threshold(threshold: Any, name: str = "threshold", error: Error = GhostmapsError) -> float:
    """``threshold`` as a float |similarity| in (0, 1]."""
    if not _is_real(threshold) or not 0.0 < float(threshold) <= 1.0:
        raise error(f"{name} must be a |similarity| in (0, 1], got {threshold!r}; e.g. {DEFAULT_THRESHOLD}.")
    return float(threshold)


def check_level(level: Any, name: str = "level", error: Error = GhostmapsError) -> float:
    """``level`` as a float confidence level in (0, 1)."""
    if not _is_real(level) or not 0.0 < float(level) < 1.0:
        raise error(f"{name} must be a confidence level in (0, 1), got {level!r}; e.g. {DEFAULT_LEVEL}.")
    return float(level)


def check_positive_int(value: Any, name: str, error: Error = GhostmapsError, hint: str = "") -> int:
    """``value`` as an int of at least 1 (not a bool); ``hint`` is added to the message, e.g. ``" (or None
    for all)"``."""
    if not is_int(value) or value < 1:
        raise error(f"{name} must be an int of at least 1{hint}, got {value!r}.")
    return int(value)


def check_count(value: Any, name: str, error: Error = GhostmapsError, hint: str = "") -> int:
    """``value`` as an int >= 0 (not a bool): a number of things where 0 means none; ``hint`` says what 0
    does, e.g. ``" (0 skips timing)"``."""
    if not is_int(value) or value < 0:
        raise error(f"{name} must be an int >= 0{hint}, got {value!r}.")
    return int(value)


def check_tol(tol: Any, name: str = "tol", error: Error = GhostmapsError) -> float:
    """``tol`` as a finite float tolerance >= 0."""
    if not _is_real(tol) or not math.isfinite(float(tol)) or float(tol) < 0.0:
        raise error(f"{name} must be a tolerance ≥ 0, got {tol!r}; e.g. 1e-6.")
    return float(tol)


def check_ratio(value: Any, name: str = "ratio", error: Error = GhostmapsError) -> int:
    """``value`` as an int >= 2, the Ghost ratio s (``ghostnet.validation.check_ratio``)."""
    return _ghost_ratio(value, name, error)


def check_odd_size(value: Any, name: str = "d", error: Error = GhostmapsError) -> int:
    """``value`` as a positive odd int, the cheap kernel size d (``ghostnet.validation.check_odd_size``)."""
    return _ghost_odd_size(value, name, error)


def per_layer_ratios(ratio: Any, layers: Any, error: Error = GhostmapsError) -> tuple[dict[str, int], int, Any]:
    """``(per-layer ratios, the smallest ratio, layers)`` from a Ghost ratio s (an int: no per-layer ratios)
    or a mapping conv name -> s, whose names become the layers when ``layers`` is None."""
    if not isinstance(ratio, Mapping):
        return {}, check_ratio(ratio, "ratio", error), layers
    if not ratio:
        raise error("ratio is an empty mapping; give each layer its s, e.g. {'layer1.0.conv1': 2}.")
    ratios = {str(n): check_ratio(s, f"ratio[{n!r}]", error) for n, s in ratio.items()}
    return ratios, min(ratios.values()), list(ratios) if layers is None else layers
