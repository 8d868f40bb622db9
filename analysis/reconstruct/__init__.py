"""Cheap-op reconstruction: how well one feature map can be made from another by a d x d depthwise conv, in
closed form (:mod:`.cheap_ops`), the Ghost structure of a layer (:mod:`.structure`) and the paper's Table 1
(:mod:`.table`); the least-squares kernel is :mod:`.lstsq`."""

from analysis.reconstruct.cheap_ops import BestSources, CheapOpFit, CheapOpFits, best_sources, fit_cheap_op
from analysis.reconstruct.lstsq import DEFAULT_RIDGE
from analysis.reconstruct.structure import Ghostability, RatioSuggestion, ghostability, suggest_ratio
from analysis.reconstruct.table import ReconstructionTable, reconstruction_table

__all__ = ["DEFAULT_RIDGE", "BestSources", "CheapOpFit", "CheapOpFits", "Ghostability", "RatioSuggestion",
           "ReconstructionTable", "best_sources", "fit_cheap_op", "ghostability", "reconstruction_table", "suggest_ratio"]
