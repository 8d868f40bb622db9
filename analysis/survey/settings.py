"""Survey settings, checked before any forward pass (each error names the setting and what it takes)."""

from __future__ import annotations

from typing import Any

from analysis._core.errors import GhostmapsError
from analysis.measure.scores import DEFAULT_THRESHOLD
from analysis.measure.similarity import DEFAULT_METRIC, METRICS
from analysis.stats import DEFAULT_GROUPS, DEFAULT_TOL

__all__ = ["BASELINES", "check_settings"]

BASELINES = ("untrained",)


def _count(name: str, value: Any, minimum: int, what: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GhostmapsError(f"{name} must be {what}, got {value!r}.")


def check_settings(*, metric: str = DEFAULT_METRIC, threshold: float = DEFAULT_THRESHOLD, level: float = 0.95,
                   linkage: str = "complete", pairs: int = 0, batch_size: int = 1, groups: int = DEFAULT_GROUPS,
                   tol: float = DEFAULT_TOL, limit: int | None = None, positions: int | None = None,
                   baseline: str | None = None, baseline_every: int = 2, baseline_positions: int | None = None,
                   baseline_bn_images: int = 1, checkpoint_every: int = 1, rank99: bool = False) -> None:
    """Refuse bad survey settings before any forward pass (each error names the setting and what it takes)."""
    from analysis.measure.groups import LINKAGES

    if metric not in METRICS:
        raise GhostmapsError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    if not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) <= 1.0:
        raise GhostmapsError(f"threshold must be a |similarity| in (0, 1], got {threshold!r}; e.g. 0.9.")
    if not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise GhostmapsError(f"level must be a confidence level in (0, 1), got {level!r}; e.g. 0.95.")
    if linkage not in LINKAGES:
        raise GhostmapsError(f"unknown linkage {linkage!r}; use one of {', '.join(LINKAGES)}.")
    _count("pairs", pairs, 0, "0 or more ghost pairs per layer")
    _count("batch_size", batch_size, 1, "at least 1")
    _count("groups", groups, 1, "at least 1 (1: no intervals; 16 by default)")
    if not isinstance(tol, (int, float)) or not float(tol) >= 0.0:
        raise GhostmapsError(f"tol must be a tolerance ≥ 0, got {tol!r}.")
    _count("limit", limit, 1, "a number of images ≥ 1 (or None for all)", optional=True)
    _count("positions", positions, 1, "a number of positions per image ≥ 1 (or None for all)", optional=True)
    if baseline is not None and baseline not in BASELINES:
        raise GhostmapsError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)} (or None).")
    _count("baseline_every", baseline_every, 1, "a number of image pairs ≥ 1 (1: every pair)")
    _count("baseline_positions", baseline_positions, 1, "a number of positions per image ≥ 1 (or None for all)",
           optional=True)
    _count("baseline_bn_images", baseline_bn_images, 1, "a number of images ≥ 1")
    _count("checkpoint_every", checkpoint_every, 1, "a number of batches ≥ 1")
    if not isinstance(rank99, bool):
        raise GhostmapsError(f"rank99 must be True or False, got {rank99!r}.")
