"""Figures of feature-map redundancy. Each function returns a matplotlib ``Figure``; ``save_figure`` writes it."""

from ._common import save_figure
from .figure1 import figure1
from .verification import verification

__all__ = ["figure1", "save_figure", "verification"]
