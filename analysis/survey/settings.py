"""Survey settings, checked before any forward pass (each error names the setting and what it takes)."""

from __future__ import annotations

from analysis._core.validation import (
    DEFAULT_LEVEL,
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

__all__ = ["check_settings"]


def check_settings(*, metric: str = "cosine", threshold: float = DEFAULT_THRESHOLD, bootstrap: int = 0,
                   level: float = DEFAULT_LEVEL, linkage: str = "complete", pairs: int = 0, batch_size: int = 1,
                   groups: int = DEFAULT_GROUPS, tol: float = DEFAULT_TOL, limit: int | None = None) -> None:
    """Refuse bad survey settings before any forward pass (each error names the setting and what it takes)."""
    check_metric(metric)
    check_threshold(threshold)
    check_count(bootstrap, "bootstrap", hint=" (0: no intervals, else a number of replicates)")
    check_level(level)
    check_linkage(linkage)
    check_count(pairs, "pairs", hint=" (ghost pairs kept per layer)")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(groups, "groups")
    check_tol(tol)
    if limit is not None:
        check_positive_int(limit, "limit", hint=" (a number of images, or None for all)")
