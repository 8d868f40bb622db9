"""Figures of feature-map redundancy. Each function returns a matplotlib ``Figure``; ``save_figure`` writes it."""

from ._common import save_figure
from .figure1 import figure1
from .gallery import pair_gallery
from .heatmap import similarity_heatmap
from .profile import redundancy_profile
from .verification import verification

__all__ = ["figure1", "pair_gallery", "redundancy_profile", "save_figure", "similarity_heatmap", "verification"]
