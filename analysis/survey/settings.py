"""Survey settings, checked before any forward pass (each error names the setting and what it takes)."""

from __future__ import annotations

from analysis._core.errors import GhostmapsError
from analysis.measure.scores import DEFAULT_THRESHOLD
from analysis.measure.similarity import METRICS
from analysis.stats import DEFAULT_GROUPS, DEFAULT_TOL

__all__ = ["check_settings"]


def check_settings(*, metric: str = "cosine", threshold: float = DEFAULT_THRESHOLD, bootstrap: int = 0,
                   level: float = 0.95, linkage: str = "complete", pairs: int = 0, batch_size: int = 1,
                   groups: int = DEFAULT_GROUPS, tol: float = DEFAULT_TOL, limit: int | None = None) -> None:
    """Refuse bad survey settings before any forward pass (each error names the setting and what it takes)."""
    from analysis.measure.groups import LINKAGES

    if metric not in METRICS:
        raise GhostmapsError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    if not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) <= 1.0:
        raise GhostmapsError(f"threshold must be a |similarity| in (0, 1], got {threshold!r}; e.g. 0.9.")
    if not isinstance(bootstrap, int) or bootstrap < 0:
        raise GhostmapsError(f"bootstrap must be 0 (no intervals) or a number of replicates, got {bootstrap!r}.")
    if not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise GhostmapsError(f"level must be a confidence level in (0, 1), got {level!r}; e.g. 0.95.")
    if linkage not in LINKAGES:
        raise GhostmapsError(f"unknown linkage {linkage!r}; use one of {', '.join(LINKAGES)}.")
    if not isinstance(pairs, int) or pairs < 0:
        raise GhostmapsError(f"pairs must be 0 or more ghost pairs per layer, got {pairs!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GhostmapsError(f"batch_size must be at least 1, got {batch_size!r}.")
    if not isinstance(groups, int) or groups < 1:
        raise GhostmapsError(f"groups must be at least 1, got {groups!r}.")
    if not isinstance(tol, (int, float)) or not float(tol) >= 0.0:
        raise GhostmapsError(f"tol must be a tolerance ≥ 0, got {tol!r}.")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise GhostmapsError(f"limit must be a number of images ≥ 1 (or None for all), got {limit!r}.")
