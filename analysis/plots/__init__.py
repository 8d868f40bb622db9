"""Figures of feature-map redundancy. Each function returns a matplotlib ``Figure``; ``save_figure`` writes it."""

from analysis.plots._common import pair_colour, save_figure
from analysis.plots.figure1 import figure1
from analysis.plots.gallery import pair_gallery
from analysis.plots.heatmap import similarity_heatmap
from analysis.plots.plan import plan_tradeoff
from analysis.plots.profile import redundancy_profile
from analysis.plots.verification import verification

__all__ = ["pair_colour", "figure1", "pair_gallery", "redundancy_profile", "save_figure", "similarity_heatmap", "verification"]
__all__ += ["plan_tradeoff"]
