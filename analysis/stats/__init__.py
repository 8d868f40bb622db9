"""Streaming, mergeable channel statistics of a layer's maps: one batch fold, grouped parts for intervals,
the image pairs of the noise-matched null, reduction across processes. See :mod:`analysis.stats.layer` for the moments and their algebra."""

from analysis.stats._kernel import (
           DEFAULT_GROUPS,
           DEFAULT_TOL,
           as_channel_matrix,
           block_size,
           normalised_moment,
)
from analysis.stats.grouped import GroupedStats
from analysis.stats.layer import LayerStats
from analysis.stats.moments import PairedMoments, position_subset

__all__ = ["DEFAULT_GROUPS", "DEFAULT_TOL", "GroupedStats", "LayerStats", "PairedMoments", "as_channel_matrix",
           "block_size", "normalised_moment", "position_subset"]
