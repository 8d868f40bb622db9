"""Survey settings, checked before any forward pass (each error names the setting and what it takes), with the
shared validators of ``analysis._core.validation``."""

from __future__ import annotations

from analysis._core.errors import GhostmapsError
from analysis._core.validation import (
    DEFAULT_LEVEL,
    DEFAULT_METRIC,
    DEFAULT_THRESHOLD,
    check_count,
    check_level,
    check_linkage,
    check_metric,
    check_positive_int,
    check_threshold,
    check_tol,
)
from analysis.stats import DEFAULT_GROUPS, DEFAULT_TOL

__all__ = ["BASELINES", "check_settings"]

BASELINES = ("untrained",)


def check_settings(*, metric: str = DEFAULT_METRIC, threshold: float = DEFAULT_THRESHOLD,
                   level: float = DEFAULT_LEVEL, linkage: str = "complete", pairs: int = 0, batch_size: int = 1,
                   groups: int = DEFAULT_GROUPS, tol: float = DEFAULT_TOL, limit: int | None = None,
                   positions: int | None = None, baseline: str | None = None, baseline_every: int = 2,
                   baseline_positions: int | None = None, baseline_bn_images: int = 1, checkpoint_every: int = 1,
                   rank99: bool = False) -> None:
    """Refuse bad survey settings before any forward pass (each error names the setting and what it takes)."""
    check_metric(metric)
    check_threshold(threshold)
    check_level(level)
    check_linkage(linkage)
    check_count(pairs, "pairs", hint=" (ghost pairs kept per layer)")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(groups, "groups", hint=" (image groups of the jackknife; 1: no intervals)")
    check_tol(tol)
    for name, value in (("limit", limit), ("positions", positions), ("baseline_positions", baseline_positions)):
        if value is not None:
            check_positive_int(value, name, hint=" (or None for all)")
    if baseline is not None and baseline not in BASELINES:
        raise GhostmapsError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)} (or None).")
    check_positive_int(baseline_every, "baseline_every", hint=" (image pairs; 1: every pair)")
    check_positive_int(baseline_bn_images, "baseline_bn_images", hint=" (images for the BatchNorm re-estimation)")
    check_positive_int(checkpoint_every, "checkpoint_every", hint=" (batches between checkpoints)")
    if not isinstance(rank99, bool):
        raise GhostmapsError(f"rank99 must be True or False, got {rank99!r}.")
